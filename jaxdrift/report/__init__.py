"""The study's report: tables (Markdown, JSON) and figures (PNG) from drift-stage outputs.

    jaxdrift.report.build_report(["runs/densenet201", "runs/resnet50v2"], "runs/report")

Every number in the tables is recomputed here from the per-sample CSVs
(DIR/drift/samples.csv) with `jaxdrift.metrics.stats`, so a table cell can always be traced
back to samples; classification metrics come from DIR/summary.json, nulls and localisation
from DIR/drift/aggregates.json, training curves from DIR/metrics.jsonl. Runs whose drift
stage scored faithfulness (samples.csv has tl_/ft_ deletion / insertion AUC,
aggregates.json "sanity") add a section with the paired TL vs FT scores and two figures;
other reports are unchanged.
"""

import pathlib
import zipfile

import numpy as np

from jaxdrift.metrics import stats
from jaxdrift import metrics, results
from jaxdrift.report import faithfulness, figures, tables
from jaxdrift.study import faithfulness_stage

__all__ = ["build_report", "load_runs", "combined_table"]


def _tolerance(runs) -> str:
  """The pointing-game tolerance of the runs, in words."""
  values = {r["config"].get("pointing_tolerance", 0.0) for r in runs if r.get("localization")}
  return " / ".join(f"{v:.3f} of the image size ({v * 224:.0f} px at 224)"
                    for v in sorted(values))


def _rerun(workdir) -> str:
  return (f"Rerun the drift stage for this workdir: delete {workdir / 'drift' / 'manifest.json'} "
          f"and run `python -m experiments.drift --workdir {workdir}` with the options it had.")


def _read_examples(path, fix: str) -> dict:
  try:
    with np.load(path, allow_pickle=False) as npz:
      return dict(npz)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise results.ResultFileError(f"{path}: expected the drift stage's example maps (.npz), "
                                  f"found an unreadable file ({type(e).__name__}: {e}). "
                                  f"{fix}") from None


def load_runs(workdirs) -> list[dict]:
  """Reads and checks each workdir's drift outputs before anything is written.

  Raises:
    FileNotFoundError: a workdir has no drift outputs (the message names the stage to run).
    jaxdrift.study.results.ResultFileError: a result file is empty, damaged or incomplete
      (the message names it and says how to write it again).
  """
  runs = []
  for workdir in map(pathlib.Path, workdirs):
    samples = workdir / "drift" / "samples.csv"
    aggregates = workdir / "drift" / "aggregates.json"
    for path in (samples, aggregates):
      if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m experiments.drift "
                                f"--workdir {workdir}` first")
    fix = _rerun(workdir)
    run = results.read_json(aggregates, required=results.AGGREGATE_KEYS, fix=fix)
    if not isinstance(run["config"], dict) or not {"selection", "seed"} <= set(run["config"]):
      raise results.ResultFileError(f"{aggregates}: expected a 'config' object with "
                                    f"'selection' and 'seed', found {run['config']!r:.80}. "
                                    f"{fix}")
    run["workdir"] = str(workdir)
    run["table"] = results.read_table(samples, required=results.SAMPLE_COLUMNS, fix=fix,
                                      numbers=metrics.FLOAT_OUTPUTS)
    examples = workdir / "drift" / "examples.npz"
    run["examples"] = _read_examples(examples, fix) if examples.exists() else {}
    log = workdir / "metrics.jsonl"
    run["log"] = results.read_jsonl(log, fix=(
        "Its training log is damaged: repair or delete the broken line (the report only "
        "draws training curves from it).")) if log.exists() else []
    epochs = workdir / "drift" / "epochs.csv"
    run["epoch_table"] = (results.read_table(epochs, fix=fix, numbers=metrics.FLOAT_OUTPUTS)
                          if epochs.exists() else None)
    runs.append(run)
  return runs


def combined_table(runs) -> dict:
  """One table over all runs. Layers are compared by their specification ("canonical" is
  relu / post_relu / mixed10 depending on the architecture); with several CAM layers,
  methods are named "method@spec". Input-resolution methods (occlusion, RISE: layer
  "input") keep their names beside one CAM layer."""
  common = [k for k in runs[0]["table"] if all(k in r["table"] for r in runs)]
  table = results.concat([{k: r["table"][k] for k in common} for r in runs])
  if len(set(table["layer_spec"]) - {"input"}) > 1:
    table["method"] = np.array(
        [f"{m}@{l}" for m, l in zip(table["method"], table["layer_spec"])], object)
  return table


def build_report(workdirs, out_dir=None) -> dict:
  """Writes report.md, report.json and figures/*.png; returns paths and panel counts.

  Args:
    workdirs: training workdirs whose drift stage has run (one per architecture).
    out_dir: where to write (default: the first workdir's parent / "report").

  Returns:
    {"report": path of report.md, "json": path, "figures": {name: {"path", "panels"}}}.
  """
  runs = load_runs(workdirs)  # checks every input before anything is written
  out_dir = pathlib.Path(out_dir or pathlib.Path(runs[0]["workdir"]).parent / "report")
  selection = runs[0]["config"]["selection"]
  table = combined_table(runs)
  metric_names = [m for m in stats.DRIFT_DIRECTION if m in table]
  headline = [m for m in tables.HEADLINE if m in table]
  summary = stats.summarize(table, metrics=metric_names, selection=selection, per_class=False,
                            seed=runs[0]["config"]["seed"])
  main_md, cells = tables.drift_table(summary, headline)
  extra_md, extra_cells = tables.drift_table(summary, [m for m in metric_names
                                                       if m not in headline])
  ranking_md, rankings = tables.ranking_table(summary, metric_names)

  figs = {}
  selected = results.subset(table, stats.select(table["label"], table["tl_pred"],
                                                table["ft_pred"], selection))

  (out_dir / "figures").mkdir(parents=True, exist_ok=True)

  def add(name, draw, *args):
    path = out_dir / "figures" / f"{name}.png"
    figs[name] = {"path": str(path), "panels": draw(*args, path)}

  add("distributions", figures.distributions, selected, headline)
  methods = sorted(set(table["method"]))
  if len(methods) >= 2 and len(runs) >= 2:
    add("ranking_slopes", figures.ranking_slopes, rankings, methods[:2], headline)
  add("training_curves", figures.training_curves,
      {r["arch"]: r["log"] for r in runs})
  for run in runs:
    ex = run["examples"]
    for key in sorted(k for k in ex if k.endswith("|label")):
      method, layer = key.split("|")[:2]
      prefix = f"{method}|{layer}"
      part = {f: ex[f"{prefix}|{f}"] for f in ("label", "image", "tl", "ft", "id")}
      first_per_class = np.unique(part["label"], return_index=True)[1]
      part = {f: v[first_per_class] for f, v in part.items()}
      name = f"overlay_{run['arch']}_{method.replace('+', 'p')}_{layer}"
      add(name, figures.overlays, part, run["class_names"],
          f"{run['arch']}, {method} at {layer}: TL vs FT")
  epoch_rows = [dict(r, arch=run["arch"]) for run in runs for r in run.get("epochs", [])]
  if epoch_rows:
    add("epoch_drift", figures.epoch_drift, epoch_rows, headline)
  loc_rows = [dict(r, arch=run["arch"]) for run in runs for r in run.get("localization", [])]
  if loc_rows:
    add("localization", figures.localization, loc_rows)
  scored = [r for r in runs if set(faithfulness_stage.COLUMNS) <= set(r["table"])]
  paired = None
  if scored:
    faith_table = combined_table(scored)
    paired = faithfulness.paired_rows(faith_table, selection, seed=runs[0]["config"]["seed"])
    add("faithfulness_drift", lambda t, path: faithfulness.drift_vs_deletion(
        t, path, metric="iou", selection=selection), faith_table)
    curves = _sanity_curves(scored)
    if curves:
      add("faithfulness_sanity", faithfulness.sanity_figure, curves)

  md = _markdown(runs, selection, main_md, extra_md, ranking_md, table, metric_names, figs,
                 out_dir, paired, scored)
  (out_dir / "report.md").write_text(md)
  data = {"selection": selection, "drift": cells + extra_cells, "rankings": rankings,
          "reversals": stats.ranking_reversals(summary, metrics=metric_names),
          "figures": figs}
  if paired is not None:
    data["faithfulness"] = paired
    data["sanity"] = {r["arch"]: r["sanity"] for r in scored if "sanity" in r}
  results.write_json(data, out_dir / "report.json")
  return {"report": out_dir / "report.md", "json": out_dir / "report.json", "figures": figs}


def _sanity_curves(runs) -> dict:
  """{"arch method@layer": {"spearman": [L + 1, 1], "ssim": [L + 1, 1]}} of the runs'
  cascading randomisation means (aggregates.json "sanity"), for `sanity_figure`."""
  curves = {}
  for run in runs:
    for row in run.get("sanity", {}).get("parameter_randomization", []):
      curves[f"{run['arch']} {row['method']}@{row['layer']}"] = {
          k: np.array([np.nan if v is None else v for v in row[k]], np.float64)[:, None]
          for k in ("spearman", "ssim")}
  return curves


def _faithfulness_md(paired, runs) -> list:
  """The report's faithfulness section (Markdown lines)."""
  steps = sorted({r["config"].get("faithfulness_steps") for r in runs})
  parts = ["## Faithfulness of the maps: TL vs FT", "",
           "Each checkpoint's maps scored on its own model (docs/faithfulness.md): deletion "
           "AUC (lower is better) and insertion AUC (higher is better), "
           f"{' / '.join(map(str, steps))} steps, blur baseline (sigma 5 px), the true "
           "class's softmax probability, maps upsampled on the drift metrics' grid. Change: "
           "FT - TL per image, mean [bootstrap 95% CI]; Wilcoxon signed-rank p of the pairs.",
           "", faithfulness.paired_markdown(paired), ""]
  rows = [[r["arch"], full["method"], full["layer"], tables.fmt(full["spearman"][-1]),
           tables.fmt(full["ssim"][-1]), tables.fmt(logit["spearman"]),
           tables.fmt(logit["ssim"])]
          for r in runs if "sanity" in r
          for full, logit in zip(r["sanity"]["parameter_randomization"],
                                 r["sanity"]["random_logit"])]
  if rows:
    parts += ["Sanity checks on the FT checkpoint (Adebayo et al. 2018): mean similarity to "
              "the original maps (lower is better) with every layer re-initialised, head "
              "down (cascading), and of the maps of a random other class. LayerCAM and "
              "Grad-CAM++ stay similar (0.3-0.6) even between two untrained networks, "
              "because they follow the activation energy; read them against Grad-CAM's row, "
              "not against 0 (docs/faithfulness.md).", "",
              tables.markdown(["arch", "method", "layer", "randomised: Spearman",
                               "randomised: SSIM", "random logit: Spearman",
                               "random logit: SSIM"], rows), ""]
  return parts


def _markdown(runs, selection, main_md, extra_md, ranking_md, table, metric_names, figs,
              out_dir, paired=None, scored=()) -> str:
  layers = ", ".join(sorted({f"{r['arch']}: {', '.join(r['layers'].values())}" for r in runs}))
  parts = [
      "# Drift of the evidence between the transfer-learning and fine-tuned checkpoints", "",
      f"Architectures (as trained): {', '.join(r['model_arch'] for r in runs)}. Layers: "
      f"{layers}. Samples: selection `{selection}` (true class = arg-max prediction of "
      "both checkpoints for `both`). Maps are compared at the input resolution after "
      "bilinear upsampling. Cells: mean ± sd [bootstrap 95% CI of the mean]. "
      + tables.DRIFT_COUNTS, "",
      "## Classification (test split)", "", tables.classification_table(runs), "",
      "## Drift: the study's metrics", "", main_md, "",
      "## Drift: further metrics", "", extra_md, "",
      "## Ranking of architectures", "", ranking_md, "",
      "## Differences between architectures (Kruskal-Wallis)", "",
      tables.kruskal_table(table, metric_names, selection), "",
      "## Null baselines", "",
      "Real drift beside drift that noise alone produces: the FT checkpoint against itself "
      "under input noise (`perturbation`), FT maps against a randomly re-initialised head "
      "(`random_head`), and TL/FT maps of different images of the same class "
      "(`permutation`).", "", tables.null_table(runs, tables.HEADLINE), ""]
  if any(r.get("localization") for r in runs):
    parts += ["## Localisation against the lesion masks (phantoms)", "",
              "Per checkpoint, over the test images of the class that it classifies "
              "correctly. Pointing game: the map's peak cell lies in the mask, or within "
              f"{_tolerance(runs)} of it; chance: the share of cells whose centre does (a "
              "peak at a random cell). Cells sit where the network centres them "
              "(`jd.models.cam_grid`) unless the drift stage ran with grid=half_pixel.", "",
              tables.localization_table(runs), ""]
  if paired is not None:
    parts += _faithfulness_md(paired, scored)
  parts += ["## Figures", ""]
  for name, fig in figs.items():
    rel = pathlib.Path(fig["path"]).relative_to(out_dir)
    parts += [f"![{name}]({rel})", ""]
  return "\n".join(parts)
