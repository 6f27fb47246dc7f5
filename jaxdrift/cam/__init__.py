"""Attribution maps for both checkpoints: CAM methods at any named layer, and input gradients.

    maps = jd.cam.compute(model, variables, images, targets, method="layercam")  # [B, h, w]
    res = jd.cam.compute(model, variables, images, targets, "gradcam++", with_aux=True)
    res.maps, res.pre_relu, res.logits, res.all_zero
    out = jd.cam.compute_pair(model, tl_variables, ft_variables, images, targets,
                              methods=("layercam", "gradcam++"))
    tl_maps, ft_maps = out["layercam"].maps                     # one program, one pass each
    big = jd.cam.upsample(tl_maps, (224, 224))                  # bilinear, half-pixel centres

Gradients are `jax.vjp` of the class LOGIT with respect to the named layer's activation
(a zero perturbation tapped into the layer, no hooks); see `methods.py` for what each CAM
weighting computes and the two Grad-CAM++ variants, and `input_grads.py` for integrated
gradients, SmoothGrad and expected gradients. Gradient-free methods share the same calls:
"scorecam" and "ablationcam" at a layer (`gradfree.py`), "occlusion" and "rise" at the input
(`occlusion.py`, `rise.py`); `jd.cam.cost` gives their passes of the network per image.
"""

from jaxdrift.cam.checks import (CAM_METHODS, GRADFREE_METHODS, INPUT_METHODS, METHODS,
                                 target_weights)
from jaxdrift.cam.cost import cost
from jaxdrift.cam.core import (CamResult, activations_and_gradients, compute, compute_many,
                               compute_pair, program)
from jaxdrift.cam.input_grads import quadrature
from jaxdrift.cam.postprocess import normalize
from jaxdrift.cam.methods import (GRADCAM_PP_VARIANTS, WEIGHTINGS, fuse_layers, gradcam,
                                  gradcam_pp_eq19, gradcam_pp_official, hirescam, layercam,
                                  tanh_scale, xgradcam)
from jaxdrift.geometry import upsample
