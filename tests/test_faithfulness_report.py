"""The study's faithfulness columns (each checkpoint on its own model) and the paired report."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

import jaxdrift as jd
from jaxdrift.report import faithfulness as report
from jaxdrift.study import faithfulness_stage


class Linear(nn.Module):
  """logits = Dense(flatten(x)): a model with the ports' calling convention."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(3, name="predictions")(x.reshape(x.shape[0], -1))


def test_columns_score_each_checkpoint_on_its_own_model():
  model = Linear()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32)
  tl, ft = (model.init(jax.random.key(k), images[:1]) for k in (0, 1))
  tl_maps, ft_maps = (jnp.asarray(rng.random((4, 2, 2)), jnp.float32) for _ in range(2))
  targets = np.array([0, 1, 2, 0])
  keep = np.array([True, False, True, True])
  cols = faithfulness_stage.faithfulness_columns(model, tl, ft, images, tl_maps, ft_maps,
                                                 targets, steps=4, keep=keep)
  assert list(cols) == list(faithfulness_stage.COLUMNS)
  for name, variables, maps in (("tl", tl, tl_maps), ("ft", ft, ft_maps)):
    fn = functools.partial(model.apply, variables, train=False)
    want = jd.faithfulness.insertion(fn, images, maps, targets, steps=4)["auc"]
    np.testing.assert_allclose(cols[f"{name}_insertion_auc"], np.asarray(want)[keep],
                               rtol=1e-6)
  assert not np.allclose(cols["tl_deletion_auc"], cols["ft_deletion_auc"])


def test_paired_rows_use_finite_pairs_bootstrap_and_wilcoxon(tmp_path):
  n = 6
  table = {"arch": np.array(["a"] * n, object), "method": np.array(["layercam"] * n, object),
           "image": np.arange(n), "label": np.zeros(n, int), "tl_pred": np.zeros(n, int),
           "ft_pred": np.array([0, 0, 0, 0, 0, 1]), "valid": np.ones(n, bool),
           "tl_deletion_auc": np.array([0.5, 0.4, 0.3, np.nan, 0.6, 0.2]),
           "ft_deletion_auc": np.array([0.3, 0.35, 0.2, 0.1, 0.3, 0.9]),
           "tl_insertion_auc": np.full(n, 0.5), "ft_insertion_auc": np.full(n, 0.5),
           "iou": np.linspace(0.2, 0.8, n)}
  rows = report.paired_rows(table, n_boot=200)
  deletion = [r for r in rows if r["score"] == "deletion"][0]
  tl, ft = np.array([0.5, 0.4, 0.3, 0.6]), np.array([0.3, 0.35, 0.2, 0.3])  # finite, "both"
  assert deletion["n"] == 4 and deletion["better"] == "lower"
  np.testing.assert_allclose(deletion["change_mean"], np.mean(ft - tl))
  assert deletion["ci_low"] <= deletion["change_mean"] <= deletion["ci_high"] < 0
  np.testing.assert_allclose(deletion["pvalue"], scipy.stats.wilcoxon(ft, tl).pvalue)
  insertion = [r for r in rows if r["score"] == "insertion"][0]
  assert insertion["change_mean"] == 0 and insertion["ci_low"] == insertion["ci_high"] == 0
  assert "FT - TL" in report.paired_markdown(rows)
  assert report.drift_vs_deletion(table, tmp_path / "d.png") == 1
  assert (tmp_path / "d.png").stat().st_size > 0
  sanity = {"x": {"spearman": np.array([[1.0, 1.0], [0.1, np.nan]]),
                  "ssim": np.array([[1.0, 1.0], [0.2, 0.3]])}}
  assert report.sanity_figure(sanity, tmp_path / "s.png") == 2
