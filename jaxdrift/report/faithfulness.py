"""Report pieces for faithfulness: paired TL vs FT statistics, and two figures.

Input is the per-sample table of the drift stage (samples.csv) with the columns of
`jaxdrift.study.faithfulness_stage` (tl_/ft_ deletion / insertion AUC).
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxdrift.metrics import stats  # noqa: E402
from jaxdrift.report import tables  # noqa: E402

SCORES = ("deletion", "insertion")
BETTER = {"deletion": "lower", "insertion": "higher"}


def paired_rows(table, selection="both", n_boot=1000, ci=0.95, seed=0) -> list:
  """Per architecture x method x score: TL and FT means and the paired change FT - TL.

  Images count when selected and finite for both checkpoints. The change's CI is the
  project's percentile bootstrap of the mean (`jd.metrics.bootstrap_ci`, seeded per group);
  the test is scipy's two-sided Wilcoxon signed-rank test of the pairs (NaN when
  degenerate).

  Returns:
    rows with arch, method, score, better ("lower" / "higher"), n, tl_mean, ft_mean,
    change_mean, ci_low, ci_high, wilcoxon_statistic, pvalue, selection.
  """
  import scipy.stats  # slow to import: only the tests need it
  keep = stats.selected_mask(table, selection)
  rows = []
  for arch, method in sorted(set(zip(table["arch"][keep], table["method"][keep]))):
    group = keep & (table["arch"] == arch) & (table["method"] == method)
    for score in SCORES:
      tl = np.asarray(table[f"tl_{score}_auc"], np.float64)[group]
      ft = np.asarray(table[f"ft_{score}_auc"], np.float64)[group]
      ok = np.isfinite(tl) & np.isfinite(ft)
      tl, ft = tl[ok], ft[ok]
      change = ft - tl
      low, high = stats.bootstrap_ci(change, n_boot, ci,
                                     stats.group_rng(seed, (arch, method, score)))
      stat, p = (stats.safe_test(scipy.stats.wilcoxon, ft, tl) if change.size
                 else (np.nan, np.nan))
      nan = float("nan")
      rows.append(dict(arch=arch, method=method, score=score, better=BETTER[score],
                       n=int(change.size), tl_mean=float(tl.mean()) if tl.size else nan,
                       ft_mean=float(ft.mean()) if ft.size else nan,
                       change_mean=float(change.mean()) if change.size else nan,
                       ci_low=low, ci_high=high, wilcoxon_statistic=stat, pvalue=p,
                       selection=selection))
  return rows


def paired_markdown(rows) -> str:
  """The rows of `paired_rows` as a Markdown table."""
  header = ["arch", "method", "score (better)", "n", "TL", "FT", "FT - TL [95% CI]",
            "Wilcoxon p"]
  cells = [[r["arch"], r["method"], f"{r['score']} AUC ({r['better']})", r["n"],
            tables.fmt(r["tl_mean"]), tables.fmt(r["ft_mean"]),
            f"{tables.fmt(r['change_mean'])} [{tables.fmt(r['ci_low'])}, "
            f"{tables.fmt(r['ci_high'])}]", tables.fmt(r["pvalue"], 4)] for r in rows]
  return tables.markdown(header, cells)


def drift_vs_deletion(table, path, metric="iou", selection="both") -> int:
  """Scatter per architecture x method: drift `metric` (x) against the change in deletion
  AUC, FT - TL (y; below 0 = the FT map is more faithful). Returns the panel count."""
  keep = stats.selected_mask(table, selection)
  groups = sorted(set(zip(table["arch"][keep], table["method"][keep])))
  fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(3.6 * max(1, len(groups)), 3.4),
                           squeeze=False, constrained_layout=True)
  for ax, (arch, method) in zip(axes[0], groups):
    rows = keep & (table["arch"] == arch) & (table["method"] == method)
    x = np.asarray(table[metric], np.float64)[rows]
    y = (np.asarray(table["ft_deletion_auc"], np.float64)
         - np.asarray(table["tl_deletion_auc"], np.float64))[rows]
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok], y[ok], s=8, alpha=0.6)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_title(f"{arch} / {method} (n={int(ok.sum())})", fontsize=8)
    ax.set_xlabel(f"drift: {metric} (TL vs FT)")
    ax.set_ylabel("deletion AUC, FT - TL (lower: FT better)")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return len(groups)


def sanity_figure(results, path) -> int:
  """Mean similarity (Spearman and SSIM over images) against the number of layers
  randomised, one line per {label: `jd.faithfulness.parameter_randomization` output}."""
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), squeeze=False, constrained_layout=True)
  for label, out in results.items():
    for ax, key in zip(axes[0], ("spearman", "ssim")):
      values = np.asarray(out[key], np.float64)
      mean = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in values])
      ax.plot(np.arange(len(mean)), mean, marker=".", label=label)
  for ax, key in zip(axes[0], ("Spearman (absolute maps)", "SSIM")):
    ax.set_xlabel("layers randomised (head down, cascading)")
    ax.set_ylabel(f"{key} to the original maps")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.legend(fontsize=7)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return 2
