"""The drift stage of a training run: maps of both checkpoints, every metric, nulls, lesions.

    paths = jaxdrift.study.run_drift("runs/resnet50v2", DriftConfig(methods=("layercam",)))

Reads a workdir written by `jaxdrift.train.train` and writes beside it:

  DIR/drift/samples.csv     one row per (image, method, layer): image id, true class, both
                            predictions, selection flags, every drift metric, validity and,
                            on phantoms, localisation of both maps against the lesion mask
  DIR/drift/epochs.csv      with epochs="all": per (image, method, layer, epoch, reference)
                            the drift of each epoch against the TL checkpoint ("tl") and
                            against the previous epoch ("previous")
  DIR/drift/aggregates.json summaries (count, invalid counts, mean, sd, median, IQR,
                            bootstrap CI) per method x layer x class, method comparisons,
                            null baselines, localisation hit rates, TL/FT test metrics
  DIR/drift/examples.npz    a few selected images per class with both maps, for figures
  DIR/drift/manifest.json   the DriftConfig that produced the files; a rerun with the same
                            configuration does nothing

The test split runs once through both checkpoints per layer: `jd.cam.compute_pair` returns
the logits (so the predictions) and every method's maps from one program. Maps are compared
at the input resolution (bilinear, as FACTS.md s.5 defines), with each cell placed where the
network centred it (`jd.models.cam_grid`, for layers on the canonical feature map's grid;
half-pixel centres for other layers or with grid="half_pixel"). On phantoms the pointing
game allows a tolerance of 15 px at 224 (Zhang et al.), scaled to the input size.
"""

import dataclasses
import math
import numbers
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift import cam, data, metrics, models, train
from jaxdrift.metrics import stats
from jaxdrift.study import epoch_drift, results


@dataclasses.dataclass(frozen=True)
class DriftConfig:
  """Choices of the drift stage (stored in DIR/drift/manifest.json).

  Attributes:
    methods: attribution methods (see `jaxdrift.cam.METHODS`).
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
    for name, choices in (("selection", tuple(_SELECTION_NEEDS)), ("epochs", ("final", "all"))):
      if getattr(self, name) not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
    match = _SPLIT.fullmatch(self.split) if isinstance(self.split, str) else None
    if match is None or match.group(1) not in _SPLITS:
      raise ValueError(f"split must be one of {', '.join(_SPLITS)}, optionally sliced as in "
                       f"TFDS (e.g. 'test[:50]'), got {self.split!r}")
    for name, minimum in (("batch_size", 1), ("null_samples", 1), ("examples_per_class", 0),
                          ("seed", 0)):
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

  def arrays(self) -> dict:
    out = {}
    for (method, layer), by_class in self.items.items():
      rows = [(c, *item) for c, items in sorted(by_class.items()) for item in items]
      if not rows:
        continue
      prefix = f"{method}|{layer}"
      out[f"{prefix}|label"] = np.array([r[0] for r in rows])
      out[f"{prefix}|image"] = np.stack([r[1] for r in rows])
      out[f"{prefix}|tl"] = np.stack([r[2] for r in rows])
      out[f"{prefix}|ft"] = np.stack([r[3] for r in rows])
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
  return paths, manifest, out_dir / "manifest.json"


def drift_done(workdir, config: DriftConfig = DriftConfig()) -> bool:
  """True when `workdir` holds a complete drift stage of `config` (a rerun would skip)."""
  paths, manifest, done = _outputs(pathlib.Path(workdir), config)
  return done.exists() and results.read_json(done) == manifest and all(
      p.exists() for p in paths.values() if p is not None)


def run_drift(workdir, config: DriftConfig = DriftConfig(), *, data_dir=None,
              progress: bool = True) -> dict:
  """Runs the drift stage on a training workdir (see the module docstring).

  Returns:
    {"samples": path, "aggregates": path, "examples": path, "epochs": path or None,
     "skipped": True when a previous run with the same configuration was complete}.

  Raises:
    DriftStageError: the selection is empty, or a layer does not exist.
    jaxdrift.train.CheckpointError: a checkpoint is missing or of another architecture.
  """
  workdir = pathlib.Path(workdir)
  paths, manifest, done = _outputs(workdir, config)
  if drift_done(workdir, config):
    return {**paths, "skipped": True}
  # The manifest is written last: without it, files left by a run killed half-way (or of
  # another configuration) never pass for finished.
  done.unlink(missing_ok=True)

  model, tl_vars, run_config = train.load_checkpoint(workdir, "tl")
  _, ft_vars, _ = train.load_checkpoint(workdir, "ft")
  size = run_config["input_size"]
  class_names = run_config["class_names"]
  input_shape = (1, size, size, 3)
  shapes = models.layer_shapes(model, input_shape)
  layers = [resolve_layer(model, input_shape, l, shapes) for l in config.layers]
  spec_of = dict(zip(layers, config.layers))  # "canonical" -> "post_relu", ...
  placement = {layer: _placement(run_config["model_arch"], shapes, layer, size, config)
               for layer in layers}
  source = data.load(run_config["data"], config.split,
                     data_dir=data_dir or run_config.get("data_dir"),
                     **run_config.get("data_options", {}))
  mesh = data.default_mesh()
  batch_size = config.batch_size - config.batch_size % mesh.shape["data"] or mesh.shape["data"]

  columns, examples = [], _Examples(config.examples_per_class)
  null_images, null_labels, lesion = [], [], False
  tl_all = {(m, l): [] for m in config.methods for l in layers}
  ft_all = {(m, l): [] for m in config.methods for l in layers}
  # With --epochs all, a pass per epoch: the later ones take the split from memory.
  memo = data.Memo() if config.epochs == "all" else None

  def split_batches():
    return data.batches(source, arch=run_config["model_arch"], batch_size=batch_size,
                        train=False, image_size=size, mesh=mesh, memo=memo)

  batches = split_batches()
  if progress:
    import tqdm
    batches = tqdm.tqdm(batches, total=data.steps_per_epoch(len(source), batch_size, False),
                        desc=f"drift {workdir.name}", unit="batch")
  for batch in batches:
    keep = np.asarray(batch["mask"])
    labels = np.asarray(batch["label"])
    for layer in layers:
      pair = cam.compute_pair(model, tl_vars, ft_vars, batch["image"], batch["label"],
                              methods=config.methods, layer=layer)
      logits = np.asarray(next(iter(pair.values())).logits)  # [2, B, K]
      tl_pred, ft_pred = logits.argmax(-1)
      for method, res in pair.items():
        tl_maps, ft_maps = res.maps[0], res.maps[1]
        d = metrics.drift(tl_maps, ft_maps, **placement[layer])
        row = results.subset(d, keep)
        row.update(image=np.asarray(batch["index"])[keep], id=np.asarray(batch["id"])[keep],
                   label=labels[keep], tl_pred=tl_pred[keep], ft_pred=ft_pred[keep],
                   method=np.full(keep.sum(), method, object),
                   layer=np.full(keep.sum(), layer, object),
                   layer_spec=np.full(keep.sum(), spec_of[layer], object),
                   tl_all_zero=np.asarray(res.all_zero[0])[keep],
                   ft_all_zero=np.asarray(res.all_zero[1])[keep])
        if "lesion_mask" in batch:
          lesion = True
          for name, maps in (("tl", tl_maps), ("ft", ft_maps)):
            loc = metrics.localize(maps, batch["lesion_mask"], **placement[layer],
                                   tolerance=config.pointing_tolerance * size)
            for k in ("pointing_game", "energy_inside", "mask_iou"):
              row[f"{name}_{k}"] = np.asarray(loc[k])[keep]
          row["pointing_chance"] = np.asarray(loc["pointing_chance"])[keep]
        columns.append(row)
        tl_all[method, layer].append(np.asarray(tl_maps)[keep])
        ft_all[method, layer].append(np.asarray(ft_maps)[keep])
        both = keep & (tl_pred == labels) & (ft_pred == labels)
        wanted = [i for i in np.flatnonzero(both) if examples.wants((method, layer), labels[i])]
        if wanted:  # upsampled for figures only while some class still lacks examples
          up_tl, up_ft = (np.asarray(cam.upsample(m, (size, size), placement[layer]["grid"]))
                          for m in (tl_maps, ft_maps))
          for i in wanted:
            examples.offer((method, layer), labels[i], _display_image(batch["image"][i]),
                           up_tl[i], up_ft[i], str(batch["id"][i]))
    n_null = sum(len(x) for x in null_images)
    if n_null < config.null_samples:
      take = np.flatnonzero(keep)[: config.null_samples - n_null]
      null_images.append(np.asarray(batch["image"])[take])
      null_labels.append(labels[take])

  table = results.concat(columns)
  for name in ("both", "tl", "ft"):
    table[f"selected_{name}"] = stats.select(table["label"], table["tl_pred"],
                                             table["ft_pred"], name)
  table["class_name"] = np.array([class_names[c] for c in table["label"]], object)
  table["arch"] = np.full(len(table["label"]), run_config["arch"], object)
  selected = stats.select(table["label"], table["tl_pred"], table["ft_pred"], config.selection)
  if not selected.any():
    raise DriftStageError(
        f"no test image is selected by selection={config.selection!r} (the true class must be "
        f"the prediction of {_SELECTION_NEEDS[config.selection]}); {len(selected)} rows, "
        "TL accuracy "
        f"{np.mean(table['tl_pred'] == table['label']):.2f}, FT accuracy "
        f"{np.mean(table['ft_pred'] == table['label']):.2f}. Train longer or use "
        "--select all.")
  results.write_table(table, paths["samples"])
  np.savez_compressed(paths["examples"], class_names=np.array(class_names),
                      **examples.arrays())

  aggregates = {
      "arch": run_config["arch"], "model_arch": run_config["model_arch"],
      "config": manifest, "class_names": class_names, "input_size": size,
      "layers": dict(zip(config.layers, layers)),
      "summary": stats.summarize(table, metrics=results.metric_columns(table),
                                 selection=config.selection, seed=config.seed),
      "method_tests": stats.compare_methods(table, metrics=results.metric_columns(table),
                                            selection=config.selection),
      "nulls": _nulls(model, ft_vars, table, tl_all, ft_all, selected,
                      np.concatenate(null_images), np.concatenate(null_labels), config,
                      placement),
      "classification": _classification(workdir),
  }
  if lesion:
    aggregates["localization"] = _localization(table, class_names)
  if config.epochs == "all":
    epoch_table = epoch_drift.table(workdir, model, table, layers, config, placement,
                                    ((tl_vars, tl_all), (ft_vars, ft_all)), split_batches)
    results.write_table(epoch_table, paths["epochs"])
    aggregates["epochs"] = epoch_drift.summarize(epoch_table, table, selected)
  results.write_json(aggregates, paths["aggregates"])
  results.write_json(manifest, done)
  return {**paths, "skipped": False}


def _placement(arch, shapes, layer, size, config) -> dict:
  """`metrics.drift` keywords that put a layer's map on the input image: its resolution and,
  for a layer on the canonical feature map's grid, the network's cell centres."""
  canonical = shapes[models.default_cam_layer(arch)].shape[1:3]
  on_grid = config.grid == "network" and shapes[layer].shape[1:3] == canonical
  return dict(resolution=(size, size), grid=models.cam_grid(arch, size) if on_grid else None)


def _random_head(ft_vars, key) -> dict:
  """FT variables with the 'predictions' layer re-initialised (flax Dense defaults)."""
  kernel = ft_vars["params"]["predictions"]["kernel"]
  head = nn.Dense(kernel.shape[1]).init(key, jnp.zeros((1, kernel.shape[0])))["params"]
  return {**ft_vars, "params": {**ft_vars["params"], "predictions": head}}


def _nulls(model, ft_vars, table, tl_all, ft_all, selected, images, labels, config,
           placement):
  """Null baselines per method and layer, reported beside the real drift:

  perturbation: the FT checkpoint against itself on inputs with Gaussian noise of std
    `perturbation_sigma` (explanation noise); random_head: FT maps against maps of the FT
    backbone under a randomly re-initialised head; permutation: TL and FT maps of different
    images of the same class (shuffled pairing).
  """
  perturb_key, permute_key, head_key = jax.random.split(jax.random.key(config.seed), 3)
  random_head = _random_head(ft_vars, head_key)
  targets = jnp.asarray(labels)
  out = []
  for (method, layer), tl_parts in tl_all.items():
    rows = (table["method"] == method) & (table["layer"] == layer)
    keep = selected[rows]

    def maps_fn(variables, method=method, layer=layer):
      return lambda x: cam.compute(model, variables, x, targets, method, layer)

    nulls = {
        "perturbation": metrics.perturbation_null(
            maps_fn(ft_vars), images, perturb_key, sigma=config.perturbation_sigma,
            **placement[layer]),
        "random_head": metrics.head_null(maps_fn(ft_vars), maps_fn(random_head), images,
                                         **placement[layer]),
        "permutation": metrics.permutation_null(
            np.concatenate(tl_parts)[keep], np.concatenate(ft_all[method, layer])[keep],
            permute_key, groups=table["label"][rows][keep], **placement[layer]),
    }
    real = {k: table[k][rows][keep] for k in results.metric_columns(table) + ["valid"]}
    for row in metrics.null_report(real, nulls, metrics=results.metric_columns(table),
                                   seed=config.seed):
      out.append(dict(method=method, layer=layer, **row))
  return out


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
