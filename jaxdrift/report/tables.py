"""Markdown tables of the report, computed from the per-sample CSVs alone."""

import numpy as np

from jaxdrift.metrics import stats

# The study's four metrics first, then the rest of jaxdrift's.
HEADLINE = ("displacement", "iou", "pearson", "concentration_change")


def fmt(value, digits=3) -> str:
  if value is None or (isinstance(value, float) and not np.isfinite(value)):
    return "nan"
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  return f"{value:.{digits}f}"


def markdown(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


# What the counts of `drift_table` mean, for the text around it.
DRIFT_COUNTS = ("selected: test pairs in the selection; invalid TL / FT: of those, pairs whose "
                "TL / FT map is invalid (not finite or sum <= 0); n: pairs with both maps "
                "valid, the number each cell averages, unless the cell says n=k: the metric "
                "is undefined for the other pairs (the correlation of a constant map).")


def drift_table(summary, metrics) -> tuple[str, list]:
  """Per architecture x method x layer (pooled classes): selected, invalid TL/FT, n (pairs
  with both maps valid) and for each metric "mean +- sd [ci_low, ci_high]", followed by
  "(n=k)" when the metric is finite for k != n pairs. Returns (markdown, cells as data; each
  cell's n is the number of values its mean averages)."""
  pooled = [r for r in summary if r["cls"] == "all"]
  groups = sorted({(r["arch"], r["method"]) for r in pooled})
  header = ["arch", "method", "selected", "invalid TL", "invalid FT", "n"] + list(metrics)
  rows, cells = [], []
  for arch, method in groups:
    by_metric = {r["metric"]: r for r in pooled if (r["arch"], r["method"]) == (arch, method)}
    first = next(iter(by_metric.values()))
    counts = {k: first[k] for k in ("n_selected", "n_invalid_tl", "n_invalid_ft", "n_valid")}
    row = [arch, method, *counts.values()]
    for metric in metrics:
      r = by_metric[metric]
      text = f"{fmt(r['mean'])} ± {fmt(r['sd'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
      row.append(text if r["n"] == counts["n_valid"] else f"{text} (n={r['n']})")
      cells.append(dict(arch=arch, method=method, metric=metric, mean=r["mean"], sd=r["sd"],
                        ci_low=r["ci_low"], ci_high=r["ci_high"], n=r["n"],
                        n_undefined=counts["n_valid"] - r["n"], **counts))
    rows.append(row)
  return markdown(header, rows), cells


def classification_table(runs) -> str:
  """Test accuracy and macro AUC of the TL and FT checkpoints per architecture."""
  rows = []
  for run in runs:
    c = run["classification"]
    tl, ft = c.get("tl", {}).get("test", {}), c.get("ft", {}).get("test", {})
    cells = [fmt(tl.get("accuracy")), fmt(ft.get("accuracy")), fmt(tl.get("auc")),
             fmt(ft.get("auc"))]
    diverged = [name.upper() for name in ("tl", "ft") if c.get(name, {}).get("diverged")]
    note = f"training diverged ({', '.join(diverged)})" if diverged else ""
    rows.append([run["arch"], run["model_arch"], *cells, note])
  return markdown(["arch", "model", "TL accuracy", "FT accuracy", "TL AUC", "FT AUC", "note"],
                  rows)


def ranking_table(summary, metrics) -> tuple[str, list]:
  """Architectures from most to least drift per metric and method, with reversals."""
  rankings = stats.rank_architectures(summary, metrics=list(metrics))
  reversals = stats.ranking_reversals(summary, metrics=list(metrics))
  flipped = {r["metric"] for r in reversals}
  rows = [[r["metric"], r["method"], " > ".join(r["ranking"]),
           "**reversed**" if r["metric"] in flipped else ""] for r in rankings]
  table = markdown(["metric", "method", "most drift > least drift", "between methods"], rows)
  if reversals:
    lines = [f"- {r['metric']}: {r['method_1']} ranks {r['more_drift_1']} above "
             f"{r['less_drift_1']}, {r['method_2']} the reverse"
             f" ({'CIs separate under both methods' if r['resolved'] else 'CIs overlap'})"
             for r in reversals]
    table += "\n\nRanking reversals:\n\n" + "\n".join(lines)
  return table, rankings


def kruskal_table(table, metrics, selection) -> str:
  rows = [[r["method"], r["metric"], ", ".join(r["archs"]), fmt(r["statistic"], 2),
           fmt(r["pvalue"], 4)]
          for r in stats.compare_architectures(table, metrics=list(metrics),
                                               selection=selection)]
  return markdown(["method", "metric", "architectures", "H", "p"], rows)


def null_table(runs, metrics) -> str:
  rows = []
  for run in runs:
    for r in run.get("nulls", []):
      if r["metric"] in metrics:
        rows.append([run["arch"], r["method"], r["metric"], r["source"], r["n"],
                     f"{fmt(r['mean'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"])
  return markdown(["arch", "method", "metric", "source", "n", "mean [95% CI]"], rows)


def localization_table(runs) -> str:
  rows = []
  for run in runs:
    for r in run.get("localization", []):
      rows.append([run["arch"], r["method"], r["class_name"], r["checkpoint"], r["n"],
                   r["n_undefined"], fmt(r["pointing_game"]), fmt(r.get("pointing_chance")),
                   fmt(r["energy_inside"]), fmt(r["mask_iou"])])
  return markdown(["arch", "method", "class", "checkpoint", "n", "no lesion / invalid",
                   "pointing game", "chance", "energy inside", "mask IoU"], rows)
