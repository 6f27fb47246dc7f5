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


def drift_table(summary, metrics) -> tuple[str, list]:
  """Per architecture x method x layer (pooled classes): n, invalid TL/FT, and for each
  metric "mean +- sd [ci_low, ci_high]". Returns (markdown, the cells as data)."""
  pooled = [r for r in summary if r["cls"] == "all"]
  groups = sorted({(r["arch"], r["method"]) for r in pooled})
  header = ["arch", "method", "n", "invalid TL", "invalid FT"] + list(metrics)
  rows, cells = [], []
  for arch, method in groups:
    by_metric = {r["metric"]: r for r in pooled if (r["arch"], r["method"]) == (arch, method)}
    first = next(iter(by_metric.values()))
    row = [arch, method, first["n_selected"], first["n_invalid_tl"], first["n_invalid_ft"]]
    for metric in metrics:
      r = by_metric[metric]
      row.append(f"{fmt(r['mean'])} ± {fmt(r['sd'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]")
      cells.append(dict(arch=arch, method=method, metric=metric, mean=r["mean"], sd=r["sd"],
                        ci_low=r["ci_low"], ci_high=r["ci_high"], n=r["n"],
                        n_selected=first["n_selected"], n_invalid_tl=first["n_invalid_tl"],
                        n_invalid_ft=first["n_invalid_ft"]))
    rows.append(row)
  return markdown(header, rows), cells


def classification_table(runs) -> str:
  """Test accuracy and macro AUC of the TL and FT checkpoints per architecture."""
  rows = []
  for run in runs:
    c = run["classification"]
    tl, ft = c.get("tl", {}).get("test", {}), c.get("ft", {}).get("test", {})
    rows.append([run["arch"], run["model_arch"], fmt(tl.get("accuracy")), fmt(ft.get("accuracy")),
                 fmt(tl.get("auc")), fmt(ft.get("auc"))])
  return markdown(["arch", "model", "TL accuracy", "FT accuracy", "TL AUC", "FT AUC"], rows)


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
