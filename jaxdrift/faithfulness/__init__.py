"""Faithfulness of attribution maps to ONE model, and sanity checks of the maps.

    fn = functools.partial(model.apply, variables, train=False)      # images -> logits [B, K]
    out = jd.faithfulness.deletion(fn, images, maps, targets)        # lower AUC is better
    out = jd.faithfulness.insertion(fn, images, maps, targets)       # higher AUC is better
    out["curve"], out["auc"], out["x"], out["settings"]
    road = jd.faithfulness.road(fn, images, maps, targets, key=key)  # MoRF: lower is better
    checks = jd.faithfulness.parameter_randomization(model, variables, images, targets,
                                                     "layercam", key=key)

Every perturbation step of every image runs in one jitted program (vmap over steps, chunked
to bound memory), sharded along the batch; see docs/faithfulness.md for what each score
means and its pitfalls.
"""

from jaxdrift.faithfulness.perturbation import (BASELINES, TIE_RULE, blur, deletion, insertion,
                                                trapezoid_auc)
from jaxdrift.faithfulness.runner import rank_positions, round_counts
from jaxdrift.faithfulness.road import FRACTIONS, ORDERS, impute, road
from jaxdrift.faithfulness.sanity import (init_variables, layer_order, parameter_randomization,
                                          random_logit, similarity)
