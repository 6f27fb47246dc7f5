"""Statistics of per-sample drift: selection, group summaries, tests, rankings, reversals.

Works on a results TABLE: a dict of equal-length 1-D numpy arrays, one row per (image,
architecture, method), built with `make_table` from a `drift` output. Columns:
"arch", "method", "image" (id that pairs rows across methods), "label" (true class),
"tl_pred", "ft_pred" (arg-max predictions of the two checkpoints), "valid_a", "valid_b"
(per-checkpoint map validity; a = TL, b = FT) and one float column per metric.

Everything here is host-side numpy/scipy on a few thousand values; every output row names
the sample selection, and every test names itself.
"""

import itertools
import warnings
import zlib

import numpy as np

SELECTIONS = ("both", "ft", "tl", "all")
# Which way a metric means "more drift": -1 lower (similarities), +1 higher (distances),
# 0 larger |mean| (signed changes). Others (per-checkpoint quantities) rank by mean, high first.
DRIFT_DIRECTION = {
    "iou": -1, "iou_auc": -1, "soft_iou": -1, "pearson": -1, "spearman": -1, "ssim": -1,
    "displacement": 1, "peak_displacement": 1,
    "concentration_change": 0, "entropy_change": 0, "gini_change": 0,
}
_META = ("arch", "method", "image", "label", "tl_pred", "ft_pred", "valid", "valid_a",
         "valid_b")


def select(labels, tl_pred, ft_pred, selection="both"):
  """Which samples enter the statistics, [N] bool.

  "both" (default, the study's choice): the true class is the arg-max prediction of both
  checkpoints; "tl" / "ft": of that checkpoint; "all": every sample.
  """
  labels, tl_pred, ft_pred = (np.asarray(v) for v in (labels, tl_pred, ft_pred))
  if selection == "both":
    return (tl_pred == labels) & (ft_pred == labels)
  if selection == "tl":
    return tl_pred == labels
  if selection == "ft":
    return ft_pred == labels
  if selection == "all":
    return np.ones(labels.shape, bool)
  raise ValueError(f"unknown selection {selection!r}; expected one of {SELECTIONS}")


def make_table(drift_out, *, arch, method, image=None, label=None, tl_pred=None,
               ft_pred=None):
  """A results table from one `drift` output [B] and per-sample metadata.

  arch and method may be strings (broadcast) or [B] arrays; image defaults to 0..B-1;
  label / tl_pred / ft_pred may be omitted only for selection="all".
  """
  out = {k: np.asarray(v) for k, v in drift_out.items()}
  n = out["valid"].shape[0]
  def column(value, dtype=None):
    value = np.asarray(value, dtype)
    return np.broadcast_to(value, (n,)).copy() if value.ndim == 0 else value
  out["arch"], out["method"] = column(arch, object), column(method, object)
  out["image"] = column(np.arange(n) if image is None else image)
  for name, value in (("label", label), ("tl_pred", tl_pred), ("ft_pred", ft_pred)):
    if value is not None:
      out[name] = column(value)
  bad = {k: v.shape for k, v in out.items() if v.shape != (n,)}
  if bad:
    raise ValueError(f"every column must have shape ({n},); got {bad}")
  return out


def concat_tables(tables):
  """Stacks tables with the same columns (e.g. one per architecture and method)."""
  tables = list(tables)
  keys = set(tables[0])
  for t in tables[1:]:
    if set(t) != keys:
      raise ValueError(f"tables have different columns: {sorted(keys ^ set(t))}")
  return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def metric_names(table):
  """The float metric columns of a table, in table order."""
  return [k for k, v in table.items() if k not in _META and v.dtype.kind == "f"]


def group_rng(seed, key):
  """A generator seeded by (seed, a stable hash of the group key)."""
  return np.random.default_rng([seed, zlib.crc32(repr(key).encode())])


def bootstrap_ci(values, n_boot=1000, ci=0.95, rng=None):
  """Percentile bootstrap CI of the mean of finite values [n] -> (low, high).

  Resamples with `rng.integers(0, n, (n_boot, n))` (seed it for reproducibility); NaN for
  fewer than 2 values.
  """
  values = np.asarray(values, np.float64)
  if values.size < 2:
    return float("nan"), float("nan")
  rng = np.random.default_rng(0) if rng is None else rng
  means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
  alpha = (1.0 - ci) / 2.0
  low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
  return float(low), float(high)


def describe(values, n_boot=1000, ci=0.95, rng=None):
  """n, n_nan, mean, sd (ddof=1), median, q25, q75, iqr, ci_low, ci_high of the finite
  values of [n]; non-finite values are counted in n_nan, never dropped silently."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  nan = float("nan")
  row = dict(n=int(finite.size), n_nan=int(values.size - finite.size))
  if finite.size == 0:
    row.update(mean=nan, sd=nan, median=nan, q25=nan, q75=nan, iqr=nan, ci_low=nan,
               ci_high=nan)
    return row
  q25, median, q75 = np.percentile(finite, [25, 50, 75])
  low, high = bootstrap_ci(finite, n_boot, ci, rng)
  row.update(mean=float(finite.mean()),
             sd=float(finite.std(ddof=1)) if finite.size > 1 else nan,
             median=float(median), q25=float(q25), q75=float(q75), iqr=float(q75 - q25),
             ci_low=low, ci_high=high)
  return row


def selected_mask(table, selection):
  """bool [N]: the rows of `table` in `selection` ("all", or a `select` rule on its label
  and predictions)."""
  if selection == "all":
    return np.ones(table["valid"].shape, bool)
  missing = [k for k in ("label", "tl_pred", "ft_pred") if k not in table]
  if missing:
    raise ValueError(f"selection {selection!r} needs the columns {missing}; pass them to "
                     "make_table or use selection='all'")
  return select(table["label"], table["tl_pred"], table["ft_pred"], selection)


def summarize(table, metrics=None, selection="both", n_boot=1000, ci=0.95, seed=0,
              per_class=True):
  """Per (arch, method, class) and pooled per (arch, method) (class "all"), per metric:
  n_selected, n_invalid_tl, n_invalid_ft, n_valid (selected pairs with both maps valid), and
  `describe` of the metric over the selected samples: its n counts the finite values the
  statistics average (at most n_valid: a metric can be undefined for a valid pair, e.g. the
  correlation of a constant map). Returns a list of row dicts, each with "selection"."""
  metrics = metric_names(table) if metrics is None else list(metrics)
  keep = selected_mask(table, selection)
  labels = table["label"] if "label" in table else np.full(keep.shape, "all", object)
  valid = (np.asarray(table["valid"], bool) if "valid" in table
           else np.asarray(table["valid_a"], bool) & np.asarray(table["valid_b"], bool))
  rows = []
  for arch, method in sorted(set(zip(table["arch"][keep], table["method"][keep]))):
    in_group = keep & (table["arch"] == arch) & (table["method"] == method)
    classes = [("all", in_group)]
    if per_class and "label" in table:
      classes += [(c, in_group & (labels == c)) for c in sorted(set(labels[in_group]))]
    for cls, rows_mask in classes:
      base = dict(arch=arch, method=method, cls=cls, selection=selection,
                  n_selected=int(rows_mask.sum()),
                  n_invalid_tl=int((~table["valid_a"][rows_mask]).sum()),
                  n_invalid_ft=int((~table["valid_b"][rows_mask]).sum()),
                  n_valid=int(valid[rows_mask].sum()))
      for metric in metrics:
        key = (arch, method, str(cls), metric)
        stats = describe(table[metric][rows_mask], n_boot, ci, group_rng(seed, key))
        rows.append(dict(base, metric=metric, **stats))
  return rows


def _paired(table, keep, arch, metric, m1, m2):
  """Values of `metric` for images present (selected, finite) under both methods."""
  def by_image(method):
    rows = keep & (table["arch"] == arch) & (table["method"] == method)
    return dict(zip(table["image"][rows].tolist(), table[metric][rows]))
  v1, v2 = by_image(m1), by_image(m2)
  images = sorted(i for i in set(v1) & set(v2) if np.isfinite(v1[i]) and np.isfinite(v2[i]))
  return np.array([v1[i] for i in images]), np.array([v2[i] for i in images])


def safe_test(fn, *samples):
  """(statistic, pvalue) of a scipy test; NaN (not a crash) when the data are degenerate."""
  try:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
      warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 on all-identical values -> NaN
      result = fn(*samples)
    return float(result.statistic), float(result.pvalue)
  except ValueError:  # all values identical, too few samples
    return float("nan"), float("nan")


def compare_methods(table, metrics=None, selection="both"):
  """Wilcoxon signed-rank test between every two methods, per architecture and metric,
  paired by image (images selected and finite under both). Rows name the test."""
  import scipy.stats  # slow to import (~0.5 s): only the tests need it
  metrics = metric_names(table) if metrics is None else list(metrics)
  keep = selected_mask(table, selection)
  rows = []
  for arch in sorted(set(table["arch"][keep])):
    methods = sorted(set(table["method"][keep & (table["arch"] == arch)]))
    for (m1, m2), metric in itertools.product(itertools.combinations(methods, 2), metrics):
      x, y = _paired(table, keep, arch, metric, m1, m2)
      stat, p = safe_test(scipy.stats.wilcoxon, x, y) if x.size else (np.nan, np.nan)
      rows.append(dict(test="wilcoxon signed-rank (paired by image, two-sided)", arch=arch,
                       metric=metric, method_1=m1, method_2=m2, n=int(x.size),
                       median_difference=float(np.median(x - y)) if x.size else np.nan,
                       statistic=stat, pvalue=p, selection=selection))
  return rows


def compare_architectures(table, metrics=None, selection="both"):
  """Kruskal-Wallis H test between architectures, per method and metric (finite values of
  selected samples; architectures are independent samples). Rows name the test."""
  import scipy.stats  # slow to import (~0.5 s): only the tests need it
  metrics = metric_names(table) if metrics is None else list(metrics)
  keep = selected_mask(table, selection)
  rows = []
  for method, metric in itertools.product(sorted(set(table["method"][keep])), metrics):
    archs = sorted(set(table["arch"][keep & (table["method"] == method)]))
    groups = []
    for arch in archs:
      values = table[metric][keep & (table["method"] == method) & (table["arch"] == arch)]
      groups.append(values[np.isfinite(values)])
    usable = len(groups) >= 2 and all(g.size for g in groups)
    stat, p = safe_test(scipy.stats.kruskal, *groups) if usable else (np.nan, np.nan)
    rows.append(dict(test="kruskal-wallis H", method=method, metric=metric, archs=archs,
                     n=[int(g.size) for g in groups], statistic=stat, pvalue=p,
                     selection=selection))
  return rows


def _drift_score(metric, mean):
  direction = DRIFT_DIRECTION.get(metric)
  if direction is None:
    return mean
  return abs(mean) if direction == 0 else direction * mean


def rank_architectures(summary, metrics=None):
  """Architectures ordered from most to least drift, per metric and method, from the pooled
  (class "all") rows of `summarize`. Similarities: lowest mean first; distances: highest
  first; signed changes: largest |mean| first; other quantities: highest mean first."""
  pooled = [r for r in summary if r["cls"] == "all"]
  metrics = sorted({r["metric"] for r in pooled}) if metrics is None else metrics
  rows = []
  for metric in metrics:
    for method in sorted({r["method"] for r in pooled if r["metric"] == metric}):
      group = [r for r in pooled if r["metric"] == metric and r["method"] == method]
      score = lambda r: _drift_score(metric, r["mean"])
      group = sorted(group, key=lambda r: (np.isnan(score(r)), -score(r)))  # NaN last
      rows.append(dict(metric=metric, method=method, order="most drift first",
                       ranking=[r["arch"] for r in group], means=[r["mean"] for r in group],
                       ci=[(r["ci_low"], r["ci_high"]) for r in group],
                       selection=group[0]["selection"]))
  return rows


def _overlap(ci_1, ci_2):
  return bool(ci_1[0] <= ci_2[1] and ci_2[0] <= ci_1[1])


def ranking_reversals(summary, metrics=None):
  """Pairs of architectures whose drift order flips between two methods (the study's
  headline finding), per metric, each qualified by whether the bootstrap CIs of the two
  means overlap under each method. `resolved` is True when neither overlaps."""
  rankings = rank_architectures(summary, metrics)
  rows = []
  for metric in sorted({r["metric"] for r in rankings}):
    by_method = {r["method"]: r for r in rankings if r["metric"] == metric}
    for m1, m2 in itertools.combinations(sorted(by_method), 2):
      r1, r2 = by_method[m1], by_method[m2]
      for x, y in itertools.combinations(sorted(set(r1["ranking"]) & set(r2["ranking"])), 2):
        i1, j1 = r1["ranking"].index(x), r1["ranking"].index(y)
        i2, j2 = r2["ranking"].index(x), r2["ranking"].index(y)
        if (i1 < j1) == (i2 < j2):
          continue
        overlap_1 = _overlap(r1["ci"][i1], r1["ci"][j1])
        overlap_2 = _overlap(r2["ci"][i2], r2["ci"][j2])
        rows.append(dict(metric=metric, method_1=m1, method_2=m2,
                         more_drift_1=x if i1 < j1 else y, less_drift_1=y if i1 < j1 else x,
                         more_drift_2=x if i2 < j2 else y, less_drift_2=y if i2 < j2 else x,
                         ci_overlap_1=overlap_1, ci_overlap_2=overlap_2,
                         resolved=not (overlap_1 or overlap_2),
                         selection=r1["selection"]))
  return rows
