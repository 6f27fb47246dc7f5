"""The drift stage of a training run: maps of both checkpoints, every metric, nulls, lesions.

    paths = jaxdrift.study.run_drift("runs/resnet50v2", DriftConfig(methods=("layercam",)))

Reads a workdir written by `jaxdrift.train.train` and writes beside it:

  DIR/drift/samples.csv     one row per (image, method, layer): image id, true class, both
                            predictions, selection flags, every drift metric, validity and,
                            on phantoms, localisation of both maps against the lesion mask
                            and, with faithfulness, deletion / insertion AUC of both maps
  DIR/drift/epochs.csv      with epochs="all": per (image, method, layer, epoch, reference)
                            the drift of each epoch against the TL checkpoint ("tl") and
                            against the previous epoch ("previous")
  DIR/drift/aggregates.json summaries (count, invalid counts, mean, sd, median, IQR,
                            bootstrap CI) per method x layer x class, method comparisons,
                            null baselines, localisation hit rates, TL/FT test metrics,
                            each method's cost per image ("cost", also printed before the
                            long part) and, with faithfulness, the FT checkpoint's sanity
                            checks
  DIR/drift/examples.npz    a few selected images per class with both maps, for figures
  DIR/drift/manifest.json   the DriftConfig that produced the files; a rerun with the same
                            configuration does nothing

  DIR/drift/timings.json    the stage's seconds: compile, input, device, host, write, total

CAM methods give a map at each layer; input-resolution methods (occlusion, RISE, integrated
gradients, SmoothGrad) one map per image at the layer "input", one cell per pixel (see
`drift_methods` for their options and keys). The test split runs once through both
checkpoints per layer: the program of
`jd.cam.compute_pair` returns the logits (so the predictions) and every method's maps, and
the metrics, the localisation and the nulls run on the device too, batch by batch, with the
host one batch behind (`drift_device`). Per-epoch checkpoints are restored ahead in a
thread (`epoch_drift`). Maps are compared at the input resolution (bilinear, as
docs/metrics.md defines), with each cell placed where the
network centred it (`jd.models.cam_grid`, for layers on the canonical feature map's grid;
half-pixel centres for other layers or with grid="half_pixel"). On phantoms the pointing
game allows a tolerance of 15 px at 224 (Zhang et al.), scaled to the input size.
"""

import concurrent.futures
import dataclasses
import functools
import json
import math
import numbers
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import cam, data, models, train
from jaxdrift.metrics import stats
from jaxdrift.study import (drift_device, drift_methods, drift_nulls, epoch_drift,
                            faithfulness_stage, results)


@dataclasses.dataclass(frozen=True)
class DriftConfig:
  """Choices of the drift stage (stored in DIR/drift/manifest.json).

  Attributes:
    methods: attribution methods (see `jaxdrift.cam.METHODS`; all but expected_gradients).
    layers: "canonical" (the last feature map, `default_cam_layer`), "last_conv" (the last
      Conv2D layer, what "seek the last conv" tools pick) or Keras layer names.
    selection: samples entering the statistics: "both" (true class = arg-max of both
      checkpoints, the study's choice), "tl", "ft" or "all". Every sample's maps and
      metrics are kept in samples.csv with its selection flags.
    epochs: "final" (TL vs FT) or "all" (also every per-epoch checkpoint).
    split: dataset split.
    batch_size: images per batch.
    null_samples: images used for the perturbation and random-head nulls.
    perturbation_sigma: std of the input noise of the perturbation null (preprocessed units).
    examples_per_class: images per class kept for overlay figures.
    seed: seed of the nulls and the bootstrap.
    grid: "network" (each map cell at the centre of its receptive field, `models.cam_grid`)
      or "half_pixel" (cell i at (i + 0.5) * H / h - 0.5, like cv2.resize).
    pointing_tolerance: pointing-game tolerance as a fraction of the image size (15 / 224:
      Zhang et al.'s 15 pixels at 224).
    faithfulness: also score every map's faithfulness to its own checkpoint (deletion and
      insertion AUC, columns tl_/ft_deletion_auc, tl_/ft_insertion_auc of samples.csv) and
      run the sanity checks on the FT checkpoint (aggregates.json "sanity"); see
      docs/faithfulness.md.
    faithfulness_steps: perturbation steps of each deletion / insertion curve.
    method_options: {method: {option: value}} over the stage's defaults for that method
      (`drift_methods`: e.g. {"rise": {"n_masks": 1000}}, {"occlusion": {"size": 16}});
      options of `jd.cam.compute`, no arrays.
  """

  methods: tuple = ("layercam", "gradcam++")
  layers: tuple = ("canonical",)
  selection: str = "both"
  epochs: str = "final"
  split: str = "test"
  batch_size: int = 16
  null_samples: int = 64
  perturbation_sigma: float = 0.01
  examples_per_class: int = 2
  seed: int = 0
  grid: str = "network"
  pointing_tolerance: float = 15 / 224
  faithfulness: bool = False
  faithfulness_steps: int = 50
  method_options: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    """Raises ValueError naming a bad field, what it must be and what it is."""
    if self.grid not in ("network", "half_pixel"):
      raise ValueError(f"grid must be 'network' or 'half_pixel', got {self.grid!r}")
    for name, known in (("methods", cam.METHODS), ("layers", None)):
      values = getattr(self, name)
      if isinstance(values, str) or not values or not all(
          isinstance(v, str) and v for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of names, got {values!r}")
      unknown = [v for v in values if known is not None and v not in known]
      if unknown:
        raise ValueError(f"unknown {name} {unknown}; expected names from {', '.join(known)}")
      if len(set(values)) < len(values):
        raise ValueError(f"{name} must name each entry once, got {list(values)}; drop the "
                         "repeated ones")
    drift_methods.check_methods(self.methods, self.method_options)
    for name, choices in (("selection", tuple(_SELECTION_NEEDS)), ("epochs", ("final", "all"))):
      if getattr(self, name) not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
    match = _SPLIT.fullmatch(self.split) if isinstance(self.split, str) else None
    if match is None or match.group(1) not in _SPLITS:
      raise ValueError(f"split must be one of {', '.join(_SPLITS)}, optionally sliced as in "
                       f"TFDS (e.g. 'test[:50]'), got {self.split!r}")
    if not isinstance(self.faithfulness, bool):
      raise ValueError(f"faithfulness must be True or False, got {self.faithfulness!r}")
    for name, minimum in (("batch_size", 1), ("null_samples", 1), ("examples_per_class", 0),
                          ("seed", 0), ("faithfulness_steps", 1)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    for name, high in (("perturbation_sigma", math.inf), ("pointing_tolerance", 1.0)):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, numbers.Real)
          or not math.isfinite(value) or not 0.0 <= value <= high):
        bound = "a finite number >= 0" if high == math.inf else f"a number in [0, {high:g}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


_SPLITS = ("train", "validation", "val", "test")
_SPLIT = re.compile(r"(\w+)(\[[^\[\]]*\])?")


_SELECTION_NEEDS = {"both": "both checkpoints", "tl": "the TL checkpoint",
                    "ft": "the FT checkpoint", "all": "no checkpoint"}


class DriftStageError(RuntimeError):
  """The workdir cannot be analysed as asked (no checkpoints, empty selection, ...)."""


def resolve_layer(model, input_shape, layer: str, shapes=None) -> str:
  """Maps "canonical" / "last_conv" to a Keras layer name; other names pass through."""
  shapes = shapes or models.layer_shapes(model, input_shape)
  if layer == "canonical":
    return models.default_cam_layer(_arch_of(model, shapes))
  if layer == "last_conv":
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape)))
    convs = {k for k, v in params["params"].items() if v.get("kernel") is not None
             and len(v["kernel"].shape) == 4}
    return [name for name in shapes if name in convs][-1]
  if layer not in shapes:
    raise DriftStageError(f"no layer {layer!r}; valid names: {', '.join(shapes)}")
  return layer


def _arch_of(model, shapes) -> str:
  for arch in models.ARCHS:
    if models.default_cam_layer(arch) in shapes:
      return arch
  raise DriftStageError(f"cannot tell the architecture of {type(model).__name__}")


class _Examples:
  """The first `k` selected images of each class, with their upsampled maps."""

  def __init__(self, k):
    self.k, self.items = k, {}

  def wants(self, key, cls) -> bool:
    return len(self.items.get(key, {}).get(int(cls), [])) < self.k

  def offer(self, key, cls, image, tl_map, ft_map, image_id):
    if self.wants(key, cls):
      self.items.setdefault(key, {}).setdefault(int(cls), []).append(
          (image, tl_map, ft_map, image_id))

  def arrays(self, placement: dict, size: int) -> dict:
    """{"method|layer|label|image|tl|ft|id": arrays}, maps upsampled to `size` on the
    network's grid (`placement`), one call per method and layer."""
    out = {}
    for (method, layer), by_class in self.items.items():
      rows = [(c, *item) for c, items in sorted(by_class.items()) for item in items]
      if not rows:
        continue
      prefix = f"{method}|{layer}"
      grid = placement[layer]["grid"]
      out[f"{prefix}|label"] = np.array([r[0] for r in rows])
      out[f"{prefix}|image"] = np.stack([r[1] for r in rows])
      for name, i in (("tl", 2), ("ft", 3)):
        out[f"{prefix}|{name}"] = np.asarray(cam.upsample(np.stack([r[i] for r in rows]),
                                                          (size, size), grid))
      out[f"{prefix}|id"] = np.array([r[4] for r in rows])
    return out


def _display_image(image) -> np.ndarray:
  """A preprocessed image back to 0..1 grey for figures (min-max of the first channel)."""
  x = np.asarray(image[..., 0], np.float32)
  return (x - x.min()) / max(float(x.max() - x.min()), 1e-8)


def _outputs(workdir: pathlib.Path, config: DriftConfig):
  """(output paths, the manifest of `config`, the manifest's path)."""
  out_dir = workdir / "drift"
  paths = {"samples": out_dir / "samples.csv", "aggregates": out_dir / "aggregates.json",
           "examples": out_dir / "examples.npz",
           "epochs": out_dir / "epochs.csv" if config.epochs == "all" else None}
  manifest = dataclasses.asdict(config)
  manifest = {k: list(v) if isinstance(v, tuple) else v for k, v in manifest.items()}
  if not config.faithfulness:  # the manifests of stages run before these options existed
    for name in ("faithfulness", "faithfulness_steps"):
      del manifest[name]
  if config.method_options:  # as JSON reads it back (tuples become lists)
    manifest["method_options"] = json.loads(json.dumps(config.method_options))
  else:
    del manifest["method_options"]
  return paths, manifest, out_dir / "manifest.json"


def drift_done(workdir, config: DriftConfig = DriftConfig()) -> bool:
  """True when `workdir` holds a complete drift stage of `config` (a rerun would skip)."""
  paths, manifest, done = _outputs(pathlib.Path(workdir), config)
  if not done.exists():
    return False
  try:
    stored = results.read_json(done)
  except results.ResultFileError:  # a damaged manifest: the stage is redone
    return False
  return stored == manifest and all(p.exists() for p in paths.values() if p is not None)


@dataclasses.dataclass
class Stage:
  """What the drift stage reads once from a workdir: model, checkpoints, split, choices."""

  workdir: pathlib.Path
  config: DriftConfig
  model: Any
  tl_vars: dict
  ft_vars: dict
  run_config: dict
  layers: list  # resolved Keras layer names, then "input" with input-resolution methods
  spec_of: dict  # resolved name -> the name asked for ("canonical", ...; "input")
  placement: dict  # layer -> `metrics.drift` keywords (resolution, grid)
  source: Any
  mesh: Any
  batch_size: int
  lesion: bool
  attribution: drift_device.Attribution
  clock: drift_device.StageClock
  memo: Any = None

  @property
  def size(self) -> int:
    return self.run_config["input_size"]

  @property
  def keys(self) -> list:
    """(method, layer) pairs, method-major: the order of every per-map table. A CAM method
    has a map at every CAM layer, an input-resolution method at "input" only."""
    cam_layers = [l for l in self.layers if l != drift_methods.INPUT]
    return [(m, l) for m in self.config.methods
            for l in drift_methods.layers_of(m, cam_layers)]

  def methods_at(self, layer: str) -> tuple:
    """The config's methods that give maps at `layer`, in the config's order."""
    return tuple(m for m, l in self.keys if l == layer)

  def host_batches(self):
    """The split's batches on the host, in order, padded to the stage's batch size."""
    return data.host_batches(
        self.source, preprocess=functools.partial(models.preprocess,
                                                  self.run_config["model_arch"]),
        batch_size=self.batch_size, train=False, image_size=self.size, memo=self.memo)

  def device_batches(self, host_batches=None):
    return drift_device.device_batches(
        self.host_batches() if host_batches is None else host_batches, self.mesh,
        self.run_config["num_classes"], self.clock)

  def steps(self) -> int:
    return data.steps_per_epoch(len(self.source), self.batch_size, False)


def open_stage(workdir, config: DriftConfig, data_dir=None, clock=None) -> Stage:
  """Loads both checkpoints and the split of a training workdir for the drift stage."""
  workdir = pathlib.Path(workdir)
  clock = clock or drift_device.StageClock()
  with clock.part("input"):
    model, tl_vars, run_config = train.load_checkpoint(workdir, "tl")
    _, ft_vars, _ = train.load_checkpoint(workdir, "ft")
    size = run_config["input_size"]
    input_shape = (1, size, size, 3)
    shapes = models.layer_shapes(model, input_shape)
    resolved = [resolve_layer(model, input_shape, l, shapes) for l in config.layers]
    spec_of = dict(zip(resolved, config.layers))
    layers = resolved if any(not drift_methods.is_input_method(m)
                             for m in config.methods) else []
    if any(drift_methods.is_input_method(m) for m in config.methods):
      layers.append(drift_methods.INPUT)
      spec_of[drift_methods.INPUT] = drift_methods.INPUT
    source = data.load(run_config["data"], config.split,
                       data_dir=data_dir or run_config.get("data_dir"),
                       **run_config.get("data_options", {}))
    mesh = data.default_mesh()
    shards = mesh.shape["data"]
    attribution = drift_device.Attribution(
        model, layers, config.methods, run_config["num_classes"], mesh,
        {m: drift_methods.options(m, size, config.method_options) for m in config.methods},
        config.seed)
    tl_vars, ft_vars = attribution.place(tl_vars), attribution.place(ft_vars)
  return Stage(
      workdir=workdir, config=config, model=model, tl_vars=tl_vars, ft_vars=ft_vars,
      run_config=run_config, layers=layers, spec_of=spec_of,
      placement={layer: _placement(run_config["model_arch"], shapes, layer, size, config)
                 for layer in layers},
      source=source, mesh=mesh,
      batch_size=config.batch_size - config.batch_size % shards or shards,
      lesion="lesion_mask" in source.dataset_info.features, attribution=attribution,
      clock=clock, memo=data.Memo() if config.epochs == "all" else None)


@dataclasses.dataclass
class Collected:
  """The main pass's results on the host, in the split's order."""

  columns: list  # per (batch, layer, method): a table of the masked-in rows
  maps: dict  # (method, layer) -> {"tl": [N, h, w], "ft": [N, h, w]} native maps
  examples: "_Examples"
  null_images: np.ndarray  # [n, H, W, C] the first `null_samples` images
  null_labels: np.ndarray  # [n]


def collect(stage: Stage, progress: bool = False) -> Collected:
  """Maps of both checkpoints and every per-image metric over the split (device side),
  gathered on the host one batch behind the device."""
  config = stage.config
  columns, examples = [], _Examples(config.examples_per_class)
  maps = {key: {"tl": [], "ft": []} for key in stage.keys}
  nulls, finite = {"image": [], "label": []}, []
  bar = None
  if progress:
    import tqdm
    bar = tqdm.tqdm(total=stage.steps(), desc=f"drift {stage.workdir.name}", unit="batch")

  def consume(host, out):
    keep = np.asarray(host["mask"])
    labels = np.asarray(host["label"])
    for layer in stage.layers:
      by_method, flag = out[layer]
      finite.append(flag)
      for method in stage.methods_at(layer):
        cols = by_method[method]
        extra = cols["extra"]
        row = results.subset(cols["drift"], keep)
        row.update(image=np.asarray(host["index"])[keep], id=np.asarray(host["id"])[keep],
                   label=labels[keep], tl_pred=extra["tl_pred"][keep],
                   ft_pred=extra["ft_pred"][keep],
                   method=np.full(keep.sum(), method, object),
                   layer=np.full(keep.sum(), layer, object),
                   layer_spec=np.full(keep.sum(), stage.spec_of[layer], object),
                   tl_all_zero=extra["tl_all_zero"][keep],
                   ft_all_zero=extra["ft_all_zero"][keep])
        if stage.lesion:
          row.update(results.subset(cols["localization"], keep))
        if "faithfulness" in cols:
          row.update(results.subset(cols["faithfulness"], keep))
        columns.append(row)
        for ckpt in ("tl", "ft"):
          maps[method, layer][ckpt].append(cols["maps"][ckpt][keep])
        both = keep & (extra["tl_pred"] == labels) & (extra["ft_pred"] == labels)
        for i in np.flatnonzero(both):
          if examples.wants((method, layer), labels[i]):
            examples.offer((method, layer), labels[i], _display_image(host["image"][i]),
                           cols["maps"]["tl"][i], cols["maps"]["ft"][i], str(host["id"][i]))
    missing = config.null_samples - sum(len(x) for x in nulls["image"])
    if missing > 0:
      take = np.flatnonzero(keep)[:missing]
      nulls["image"].append(np.asarray(host["image"])[take])
      nulls["label"].append(labels[take])
    if bar is not None:
      bar.update()

  try:
    drift_device.run_batches(stage.device_batches(),
                             drift_device.pair_dispatch(stage, stage.tl_vars, stage.ft_vars,
                                                        config.faithfulness), consume,
                             stage.clock)
  finally:
    if bar is not None:
      bar.close()
  drift_device.check_finite(finite)
  return Collected(columns=columns,
                   maps={k: {c: np.concatenate(v[c]) for c in v} for k, v in maps.items()},
                   examples=examples, null_images=np.concatenate(nulls["image"]),
                   null_labels=np.concatenate(nulls["label"]))


def tabulate(stage: Stage, collected: Collected) -> tuple[dict, np.ndarray]:
  """(samples table with selection flags, class names and arch; rows selected by
  config.selection). Raises DriftStageError when the selection is empty."""
  config, class_names = stage.config, stage.run_config["class_names"]
  table = results.concat(collected.columns)
  for name in ("both", "tl", "ft"):
    table[f"selected_{name}"] = stats.select(table["label"], table["tl_pred"],
                                             table["ft_pred"], name)
  table["class_name"] = np.array([class_names[c] for c in table["label"]], object)
  table["arch"] = np.full(len(table["label"]), stage.run_config["arch"], object)
  selected = stats.select(table["label"], table["tl_pred"], table["ft_pred"], config.selection)
  if not selected.any():
    raise DriftStageError(
        f"no test image is selected by selection={config.selection!r} (the true class must be "
        f"the prediction of {_SELECTION_NEEDS[config.selection]}); {len(selected)} rows, "
        "TL accuracy "
        f"{np.mean(table['tl_pred'] == table['label']):.2f}, FT accuracy "
        f"{np.mean(table['ft_pred'] == table['label']):.2f}. Train longer or use "
        "--select all.")
  return table, selected


def host_statistics(stage: Stage, table: dict, manifest: dict) -> dict:
  """The parts of aggregates.json that only need the samples table (numpy and scipy on
  the host: summaries with bootstrap CIs, method tests and, on phantoms, localisation).
  Pure: `run_drift` runs it in a thread while the device computes the nulls and epochs."""
  config = stage.config
  metric_names = results.metric_columns(table)
  out = {
      "arch": stage.run_config["arch"], "model_arch": stage.run_config["model_arch"],
      "config": manifest, "class_names": stage.run_config["class_names"],
      "input_size": stage.size, "layers": {stage.spec_of[l]: l for l in stage.layers},
      "summary": stats.summarize(table, metrics=metric_names, selection=config.selection,
                                 seed=config.seed),
      "method_tests": stats.compare_methods(table, metrics=metric_names,
                                            selection=config.selection),
  }
  if stage.lesion:
    out["localization"] = _localization(table, stage.run_config["class_names"])
  return out


def aggregate(statistics: dict, nulls: list, classification: dict, epochs=None,
              sanity=None) -> dict:
  """aggregates.json, its keys in a fixed order (`host_statistics`' first)."""
  out = {k: v for k, v in statistics.items() if k != "localization"}
  out.update(nulls=nulls, classification=classification)
  if "localization" in statistics:
    out["localization"] = statistics["localization"]
  if epochs is not None:
    out["epochs"] = epochs
  if sanity is not None:
    out["sanity"] = sanity
  return out


def sanity_checks(stage: Stage, collected: Collected) -> dict:
  """aggregates.json "sanity": `faithfulness_stage.sanity` on the FT checkpoint, with the
  null images (the first `null_samples` images of the split) and their true classes, for
  every (method, layer) of the stage with its options. RISE and SmoothGrad are left out
  (listed under "skipped"): `jd.faithfulness.parameter_randomization` takes `key` for
  its re-initialisation and cannot pass their mask / noise key on to `jd.cam`."""
  config = stage.config
  key = jax.random.fold_in(jax.random.key(config.seed), _SANITY_STREAM)
  options = {m: drift_methods.options(m, stage.size, config.method_options)
             for m in config.methods}
  keys = [k for k in stage.keys if k[0] not in drift_methods.RANDOM_METHODS]
  skipped = sorted({m for m, _ in stage.keys} & set(drift_methods.RANDOM_METHODS))
  out = faithfulness_stage.sanity(stage.model, stage.ft_vars, collected.null_images,
                                  collected.null_labels, config.methods, stage.layers,
                                  key=key, mesh=stage.mesh, keys=keys, options=options)
  if skipped:
    out["skipped"] = skipped
  return out


_SANITY_STREAM = 22  # the sanity checks' own random stream, apart from the nulls' keys


def run_drift(workdir, config: DriftConfig = DriftConfig(), *, data_dir=None,
              progress: bool = True) -> dict:
  """Runs the drift stage on a training workdir (see the module docstring).

  Args:
    workdir: a training run's directory.
    config: the stage's choices.
    data_dir: TFDS data directory (default: the run's).
    progress: print each method's cost per image (one line each, `drift_methods.cost_line`)
      before the long part, and show a progress bar.

  Returns:
    {"samples": path, "aggregates": path, "examples": path, "epochs": path or None,
     "skipped": True when a previous run with the same configuration was complete,
     "timings": {compile, input, device, host, write, total} seconds (also written to
     DIR/drift/timings.json)}.

  Raises:
    DriftStageError: the selection is empty, or a layer does not exist.
    jaxdrift.train.CheckpointError: a checkpoint is missing or of another architecture.
  """
  workdir = pathlib.Path(workdir)
  paths, manifest, done = _outputs(workdir, config)
  if drift_done(workdir, config):
    return {**paths, "skipped": True, "timings": {}}
  # The manifest is written last: without it, files left by a run killed half-way (or of
  # another configuration) never pass for finished.
  done.unlink(missing_ok=True)
  clock = drift_device.StageClock()
  with clock.watching_compiles():
    stage = open_stage(workdir, config, data_dir, clock)
    with clock.part("host"):
      cost = drift_methods.stage_costs(stage, progress)
    collected = collect(stage, progress)
    with clock.part("host"):
      table, selected = tabulate(stage, collected)
    with clock.part("write"):
      results.write_table(table, paths["samples"])
    with clock.part("host"):
      examples = collected.examples.arrays(stage.placement, stage.size)
    with clock.part("write"):
      np.savez_compressed(paths["examples"],
                          class_names=np.array(stage.run_config["class_names"]), **examples)
    # The host's statistics run beside the device's nulls and epochs (the clock counts
    # "host" for the wait on them only: the parts of a stage never overlap).
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxdrift-stats") as pool:
      statistics = pool.submit(host_statistics, stage, table, manifest)
      nulls = drift_nulls.nulls(stage, table, selected, collected)
      epochs, epoch_table, sanity = None, None, None
      if config.faithfulness:
        with clock.part("device"):
          sanity = sanity_checks(stage, collected)
      if config.epochs == "all":
        epoch_table = epoch_drift.table(stage, table, collected.maps)
        with clock.part("write"):
          results.write_table(epoch_table, paths["epochs"])
        with clock.part("host"):
          epochs = epoch_drift.summarize(epoch_table, table, selected)
      with clock.part("host"):
        aggregates = aggregate(statistics.result(), nulls, _classification(workdir), epochs,
                               sanity)
        aggregates["cost"] = cost
    with clock.part("write"):
      results.write_json(aggregates, paths["aggregates"])
      results.write_json(manifest, done)
  timings = clock.split()
  results.write_json(timings, done.parent / "timings.json")
  return {**paths, "skipped": False, "timings": timings}


def _placement(arch, shapes, layer, size, config) -> dict:
  """`metrics.drift` keywords that put a layer's map on the input image: its resolution and,
  for a layer on the canonical feature map's grid, the network's cell centres."""
  if layer == drift_methods.INPUT:  # one cell per pixel: the identity placement
    return dict(resolution=(size, size), grid=drift_methods.INPUT_GRID)
  canonical = shapes[models.default_cam_layer(arch)].shape[1:3]
  on_grid = config.grid == "network" and shapes[layer].shape[1:3] == canonical
  return dict(resolution=(size, size), grid=models.cam_grid(arch, size) if on_grid else None)


def _classification(workdir) -> dict:
  path = pathlib.Path(workdir) / "summary.json"
  return results.read_json(path) if path.exists() else {}


def _localization(table, class_names) -> list[dict]:
  """Pointing-game hit rate (and its random-peak chance level), energy inside and mask IoU
  per method, layer, class and checkpoint, over the test images of the class that THIS
  checkpoint classifies correctly (its true positives: where a map explains a right answer).
  The no-lesion class has no mask: NaN rows, counted as undefined."""
  out = []
  for method, layer in sorted(set(zip(table["method"], table["layer"]))):
    group = (table["method"] == method) & (table["layer"] == layer)
    for cls in sorted(set(table["label"][group])):
      for ckpt in ("tl", "ft"):
        rows = group & (table["label"] == cls) & (table[f"{ckpt}_pred"] == cls)
        hits = table[f"{ckpt}_pointing_game"][rows]
        defined = np.isfinite(hits)

        def mean(column):
          return float(np.nanmean(table[column][rows])) if defined.any() else float("nan")

        out.append(dict(method=method, layer=layer, label=int(cls),
                        class_name=class_names[cls], checkpoint=ckpt,
                        n=int(rows.sum()), n_undefined=int((~defined).sum()),
                        pointing_game=float(hits[defined].mean()) if defined.any()
                        else float("nan"),
                        pointing_chance=mean("pointing_chance"),
                        energy_inside=mean(f"{ckpt}_energy_inside"),
                        mask_iou=mean(f"{ckpt}_mask_iou")))
  return out
