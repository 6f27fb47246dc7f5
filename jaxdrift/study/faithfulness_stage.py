"""Faithfulness columns of the drift stage: deletion and insertion AUC of both checkpoints.

For one batch and one attribution method, each checkpoint's maps are scored against THAT
checkpoint's model (`jd.faithfulness.deletion` / `insertion`), so the paired change
FT - TL says whether fine-tuning made the evidence more or less faithful to the model that
uses it. Lower deletion AUC and higher insertion AUC are better.
"""

import functools

import numpy as np

from jaxdrift import faithfulness

COLUMNS = ("tl_deletion_auc", "ft_deletion_auc", "tl_insertion_auc", "ft_insertion_auc")


def faithfulness_columns(model, tl_variables, ft_variables, images, tl_maps, ft_maps, targets,
                         *, steps=50, baseline="blur", score="probability", grid=None,
                         keep=None, mesh=None) -> dict:
  """Per-image deletion and insertion AUC of the TL and FT maps, each on its own model.

  Args:
    model: a port; tl_variables, ft_variables: the two checkpoints' variables.
    images: [B, H, W, C] as the model takes them (preprocessed).
    tl_maps, ft_maps: [B, h, w] maps of the two checkpoints (raw or upsampled; upsampled to
      H x W inside with `grid`).
    targets: int [B], the class the maps explain.
    steps, baseline, score, grid, mesh: as in `jd.faithfulness.deletion`.
    keep: optional [B] bool; the columns keep only these rows (as the drift stage's rows).

  Returns:
    {name: float64 [n]} for `COLUMNS`, n = B or keep.sum().
  """
  out = {}
  kw = dict(steps=steps, baseline=baseline, score=score, grid=grid, mesh=mesh)
  for name, variables, maps in (("tl", tl_variables, tl_maps), ("ft", ft_variables, ft_maps)):
    fn = functools.partial(model.apply, variables, train=False)
    for kind, score_fn in (("deletion", faithfulness.deletion),
                           ("insertion", faithfulness.insertion)):
      auc = np.asarray(score_fn(fn, images, maps, targets, **kw)["auc"], np.float64)
      out[f"{name}_{kind}_auc"] = auc if keep is None else auc[np.asarray(keep, bool)]
  return {k: out[k] for k in COLUMNS}
