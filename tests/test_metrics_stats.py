"""Statistics against scipy.stats on the same data; selection, grouping, rankings, reversals."""

import numpy as np
import pytest
import scipy.stats

import jaxdrift as jd

M = jd.metrics
ARCHS = ("densenet201", "inceptionv3", "resnet50v2")
METHODS = ("gradcam++", "layercam")
# Mean IoU per (method, arch): under LayerCAM InceptionV3 drifts most (lowest IoU) and
# ResNet50V2 least; under Grad-CAM++ the order reverses. DenseNet vs ResNet under Grad-CAM++
# are close (CIs overlap).
IOU_MEANS = {("layercam", "inceptionv3"): 0.3, ("layercam", "densenet201"): 0.5,
             ("layercam", "resnet50v2"): 0.7, ("gradcam++", "inceptionv3"): 0.7,
             ("gradcam++", "densenet201"): 0.4, ("gradcam++", "resnet50v2"): 0.405}


def synthetic_table(n=60, seed=0):
  rng = np.random.default_rng(seed)
  tables = []
  label = rng.integers(0, 3, n)
  for arch in ARCHS:
    tl_pred = np.where(rng.random(n) < 0.9, label, (label + 1) % 3)
    ft_pred = np.where(rng.random(n) < 0.9, label, (label + 2) % 3)
    for method in METHODS:
      iou = np.clip(IOU_MEANS[method, arch] + 0.05 * rng.standard_normal(n), 0, 1)
      valid_a = rng.random(n) > 0.05
      valid_b = rng.random(n) > 0.05
      valid = valid_a & valid_b
      out = dict(iou=np.where(valid, iou, np.nan),
                 displacement=np.where(valid, rng.random(n) * 0.1, np.nan),
                 valid=valid, valid_a=valid_a, valid_b=valid_b)
      # Rows of each method in a different order: tests must pair by image id.
      order = rng.permutation(n) if method == "layercam" else np.arange(n)
      out = {k: v[order] for k, v in out.items()}
      tables.append(M.make_table(out, arch=arch, method=method, image=order,
                                 label=label[order], tl_pred=tl_pred[order],
                                 ft_pred=ft_pred[order]))
  return M.concat_tables(tables)


@pytest.fixture(scope="module")
def table():
  return synthetic_table()


def test_select_modes():
  y, tl, ft = np.array([0, 1, 2, 0]), np.array([0, 1, 0, 1]), np.array([0, 2, 2, 1])
  assert M.select(y, tl, ft).tolist() == [True, False, False, False]
  assert M.select(y, tl, ft, "tl").tolist() == [True, True, False, False]
  assert M.select(y, tl, ft, "ft").tolist() == [True, False, True, False]
  assert M.select(y, tl, ft, "all").all()
  with pytest.raises(ValueError, match="both"):
    M.select(y, tl, ft, "correct")


def test_describe_matches_scipy():
  rng = np.random.default_rng(1)
  x = rng.gamma(2.0, size=101)
  x[[3, 50]] = np.nan
  x[7] = np.inf
  d = M.describe(x, rng=np.random.default_rng(0))
  finite = x[np.isfinite(x)]
  assert d["n"] == 98 and d["n_nan"] == 3
  assert d["mean"] == pytest.approx(np.mean(finite))
  assert d["sd"] == pytest.approx(scipy.stats.tstd(finite))
  assert d["median"] == pytest.approx(np.median(finite))
  assert d["iqr"] == pytest.approx(scipy.stats.iqr(finite))
  assert d["ci_low"] < d["mean"] < d["ci_high"]


def test_bootstrap_ci_equals_scipy_percentile_bootstrap():
  x = np.random.default_rng(2).normal(size=40)
  ours = M.bootstrap_ci(x, n_boot=500, ci=0.95, rng=np.random.default_rng(7))
  ref = scipy.stats.bootstrap((x,), np.mean, n_resamples=500, confidence_level=0.95,
                              method="percentile", rng=np.random.default_rng(7))
  np.testing.assert_allclose(ours, [ref.confidence_interval.low,
                                    ref.confidence_interval.high], rtol=1e-12)


def test_summarize_counts_groups_and_records_selection(table):
  rows = M.summarize(table, metrics=["iou"], n_boot=200)
  assert {r["selection"] for r in rows} == {"both"}
  assert len(rows) == len(ARCHS) * len(METHODS) * 4  # 3 classes + pooled
  row = next(r for r in rows if (r["arch"], r["method"], r["cls"]) ==
             ("inceptionv3", "layercam", 1))
  keep = (M.select(table["label"], table["tl_pred"], table["ft_pred"]) &
          (table["arch"] == "inceptionv3") & (table["method"] == "layercam") &
          (table["label"] == 1))
  assert row["n_selected"] == keep.sum()
  assert row["n_invalid_tl"] == (~table["valid_a"][keep]).sum()
  assert row["n_invalid_ft"] == (~table["valid_b"][keep]).sum()
  assert row["n"] + row["n_nan"] == keep.sum()
  assert row["mean"] == pytest.approx(np.nanmean(table["iou"][keep]))
  # Seeded: the same call gives the same CI.
  again = M.summarize(table, metrics=["iou"], n_boot=200)
  assert [r["ci_low"] for r in again] == [r["ci_low"] for r in rows]
  everything = M.summarize(table, metrics=["iou"], selection="all", n_boot=10)
  pooled = next(r for r in everything if r["cls"] == "all")
  assert pooled["selection"] == "all" and pooled["n_selected"] == 60


def test_wilcoxon_between_methods_pairs_by_image(table):
  rows = M.compare_methods(table, metrics=["iou"])
  row = next(r for r in rows if r["arch"] == "densenet201")
  assert row["test"].startswith("wilcoxon signed-rank")
  keep = M.select(table["label"], table["tl_pred"], table["ft_pred"])
  def values(method):
    m = keep & (table["arch"] == "densenet201") & (table["method"] == method)
    return dict(zip(table["image"][m], table["iou"][m]))
  x, y = values("gradcam++"), values("layercam")
  images = sorted(i for i in set(x) & set(y) if np.isfinite(x[i]) and np.isfinite(y[i]))
  ref = scipy.stats.wilcoxon([x[i] for i in images], [y[i] for i in images])
  assert row["n"] == len(images)
  assert row["statistic"] == pytest.approx(ref.statistic)
  assert row["pvalue"] == pytest.approx(ref.pvalue)


def test_kruskal_between_architectures(table):
  rows = M.compare_architectures(table, metrics=["iou"])
  row = next(r for r in rows if r["method"] == "layercam")
  assert row["test"] == "kruskal-wallis H" and row["archs"] == list(ARCHS)
  keep = M.select(table["label"], table["tl_pred"], table["ft_pred"])
  groups = []
  for arch in ARCHS:
    v = table["iou"][keep & (table["method"] == "layercam") & (table["arch"] == arch)]
    groups.append(v[np.isfinite(v)])
  ref = scipy.stats.kruskal(*groups)
  assert row["statistic"] == pytest.approx(ref.statistic)
  assert row["pvalue"] == pytest.approx(ref.pvalue)


def test_degenerate_tests_give_nan_not_crash():
  out = dict(iou=np.full(6, 0.5), valid=np.ones(6, bool), valid_a=np.ones(6, bool),
             valid_b=np.ones(6, bool))
  table = M.concat_tables([M.make_table(out, arch=a, method=m)
                           for a in ("x", "y") for m in ("p", "q")])
  w = M.compare_methods(table, selection="all")
  k = M.compare_architectures(table, selection="all")
  assert np.isnan(k[0]["pvalue"]) and len(w) == 2
  with pytest.raises(ValueError, match="selection='all'"):
    M.summarize(table)


def test_ranking_and_reversals_qualified_by_ci_overlap(table):
  summary = M.summarize(table, metrics=["iou"], n_boot=500)
  rankings = {r["method"]: r["ranking"] for r in M.rank_architectures(summary)}
  assert rankings["layercam"] == ["inceptionv3", "densenet201", "resnet50v2"]
  assert rankings["gradcam++"][-1] == "inceptionv3"
  reversals = {(r["more_drift_2"], r["less_drift_2"]): r
               for r in M.ranking_reversals(summary)}
  # method_1 = gradcam++, method_2 = layercam (sorted names).
  inc_res = reversals[("inceptionv3", "resnet50v2")]
  assert inc_res["resolved"] and not inc_res["ci_overlap_1"] and not inc_res["ci_overlap_2"]
  assert ("inceptionv3", "densenet201") in reversals
  # DenseNet vs ResNet: reversed only if Grad-CAM++ happens to order them that way; their
  # Grad-CAM++ means are 0.4 vs 0.405, so such a reversal must not count as resolved.
  for r in reversals.values():
    if {r["more_drift_1"], r["less_drift_1"]} == {"densenet201", "resnet50v2"}:
      assert r["ci_overlap_1"] and not r["resolved"]
