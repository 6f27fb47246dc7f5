"""Figures of the report (matplotlib, Agg backend, PNG). Each returns its panel count."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_DPI = 110


def _grid(rows, cols, width, height):
  """A rows x cols grid of panels, each width x height inches."""
  return plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                      constrained_layout=True)


def _save(fig, path) -> int:
  panels = sum(1 for ax in fig.axes if ax.get_label() != "<colorbar>")
  fig.savefig(path, dpi=_DPI)
  plt.close(fig)
  return panels


def overlays(examples, class_names, title, path) -> int:
  """One row per example image: image | TL map | FT map | FT - TL, one colour scale per
  pair (the TL and FT maps share it; the difference is symmetric around 0)."""
  n = len(examples["label"])
  fig, axes = _grid(n, 4, 2.5, 2.5)
  for i in range(n):
    image, tl, ft = examples["image"][i], examples["tl"][i], examples["ft"][i]
    vmax = max(float(tl.max()), float(ft.max()), 1e-12)
    diff = ft - tl
    dmax = max(float(np.abs(diff).max()), 1e-12)
    name = class_names[int(examples["label"][i])]
    panels = [(image, "gray", 0, 1, f"{name}\n{examples['id'][i]}"),
              (tl, "inferno", 0, vmax, "TL map"), (ft, "inferno", 0, vmax, "FT map"),
              (diff, "coolwarm", -dmax, dmax, "FT - TL")]
    for ax, (img, cmap, lo, hi, label) in zip(axes[i], panels):
      if cmap != "gray":
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
      shown = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, alpha=1.0 if cmap == "gray" else 0.6)
      ax.set_title(label, fontsize=8)
      ax.set_xticks([])
      ax.set_yticks([])
      if cmap != "gray":
        cbar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        cbar.ax.tick_params(labelsize=6)
        cbar.ax.set_label("<colorbar>")
  fig.suptitle(title + " (maps in raw attribution units)")
  return _save(fig, path)


def distributions(table, metrics, path) -> int:
  """Box plots of each metric per architecture x method over the selected samples."""
  groups = sorted(set(zip(table["arch"], table["method"])))
  fig, axes = _grid(1, len(metrics), 4.2, 4)
  for ax, metric in zip(axes[0], metrics):
    data = []
    for arch, method in groups:
      v = table[metric][(table["arch"] == arch) & (table["method"] == method)]
      data.append(v[np.isfinite(v)])
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(groups) + 1))
    ax.set_xticklabels([f"{a}\n{m}" for a, m in groups], rotation=45, ha="right", fontsize=7)
    ax.set_title(metric)
    ax.set_ylabel(_unit(metric))
    ax.grid(axis="y", alpha=0.3)
  fig.suptitle("Drift between the TL and FT maps per architecture and method "
               "(selected samples; triangle = mean)")
  return _save(fig, path)


def _unit(metric) -> str:
  return {"displacement": "fraction of the image diagonal",
          "peak_displacement": "fraction of the image diagonal",
          "iou": "IoU (top 20%)", "pearson": "correlation", "spearman": "rank correlation",
          "concentration_change": "change of top-10% mass share"}.get(metric, metric)


def ranking_slopes(rankings, methods, metrics, path) -> int:
  """Rank of each architecture (1 = most drift) under two methods, one panel per metric."""
  fig, axes = _grid(1, len(metrics), 3.6, 3.6)
  for ax, metric in zip(axes[0], metrics):
    by_method = {r["method"]: r["ranking"] for r in rankings if r["metric"] == metric}
    archs = sorted({a for r in by_method.values() for a in r})
    for arch in archs:
      ranks = [by_method[m].index(arch) + 1 if arch in by_method.get(m, []) else np.nan
               for m in methods]
      ax.plot(range(len(methods)), ranks, marker="o", label=arch)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods)
    ax.set_ylim(len(archs) + 0.5, 0.5)
    ax.set_yticks(range(1, len(archs) + 1))
    ax.set_ylabel("rank (1 = most drift)")
    ax.set_title(metric)
  axes[0][0].legend(fontsize=7, loc="lower left")
  fig.suptitle("Architecture ranking by drift: crossing lines are reversals between methods")
  return _save(fig, path)


def epoch_drift(epoch_rows, metrics, path) -> int:
  """Mean drift of each epoch's maps against the TL checkpoint, per arch x method."""
  fig, axes = _grid(1, len(metrics), 4.2, 3.6)
  for ax, metric in zip(axes[0], metrics):
    keys = sorted({(r["arch"], r["method"]) for r in epoch_rows})
    for arch, method in keys:
      rows = sorted((r for r in epoch_rows if (r["arch"], r["method"]) == (arch, method)
                     and r["reference"] == "tl"), key=lambda r: r["epoch"])
      ax.plot([r["epoch"] for r in rows], [r[metric] for r in rows], marker=".",
              label=f"{arch} {method}")
    ax.set_xlabel("epoch (phase 1, then phase 2)")
    ax.set_ylabel(_unit(metric))
    ax.set_title(f"{metric} vs TL checkpoint")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=6)
  fig.suptitle("Drift across training (mean over the selected test images)")
  return _save(fig, path)


def training_curves(logs, path) -> int:
  """Validation accuracy and training loss per epoch, one panel per architecture."""
  fig, axes = _grid(1, len(logs), 4.2, 3.4)
  for ax, (arch, records) in zip(axes[0], logs.items()):
    epochs = [r for r in records if r.get("kind") == "epoch"]
    x = [r["global_epoch"] for r in epochs]
    ax.plot(x, [r.get("val_accuracy", np.nan) for r in epochs], marker="o",
            label="validation accuracy")
    ax.plot(x, [r.get("train_loss", np.nan) for r in epochs], marker="s",
            label="training loss")
    tl_end = max([r["global_epoch"] for r in epochs if r.get("phase") == "tl"], default=None)
    if tl_end is not None:
      ax.axvline(tl_end + 0.5, color="gray", linestyle="--", label="phase 1 | phase 2")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy / loss")
    ax.set_title(arch)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.suptitle("Training curves")
  return _save(fig, path)


def localization(rows, path) -> int:
  """Pointing-game hit rate per lesion class, TL vs FT, one panel per arch x method."""
  keys = sorted({(r["arch"], r["method"]) for r in rows})
  fig, axes = _grid(1, len(keys), 4.2, 3.6)
  for ax, (arch, method) in zip(axes[0], keys):
    group = [r for r in rows if (r["arch"], r["method"]) == (arch, method)
             and r["pointing_game"] is not None and np.isfinite(r["pointing_game"])]
    classes = sorted({r["class_name"] for r in group})
    x = np.arange(len(classes))
    for offset, ckpt in ((-0.2, "tl"), (0.2, "ft")):
      values = [next((r["pointing_game"] for r in group
                      if r["class_name"] == c and r["checkpoint"] == ckpt), np.nan)
                for c in classes]
      ax.bar(x + offset, values, width=0.4, label=ckpt.upper())
    chance = [next((r.get("pointing_chance", np.nan) for r in group if r["class_name"] == c),
                   np.nan) for c in classes]
    ax.scatter(x, chance, marker="_", s=400, color="black", zorder=3,
               label="chance (random cell)")
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("pointing-game hit rate")
    ax.set_title(f"{arch} {method}")
  axes[0][0].legend(fontsize=7)
  fig.suptitle("Do the maps point at the lesion? (phantoms, each checkpoint's true positives)")
  return _save(fig, path)
