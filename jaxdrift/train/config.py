"""Training configurations and the presets `paper`, `demo`, `smoke`.

    cfg = preset("paper", arch="inceptionv3")
    cfg = dataclasses.replace(preset("demo", arch="resnet50v2"), seed=1)

The study (arXiv 2604.08513) publishes neither its input size, optimiser, learning rates,
epochs nor head. The `paper` preset is jaxdrift's documented choice where it is silent:

* input: each architecture's Keras default size (224 DenseNet201/ResNet50V2, 299 InceptionV3),
  the 5-class chest X-ray data, light radiograph-safe augmentation (no horizontal flip);
* head: global average pooling -> Dropout(0.2) -> Dense(5) logits, as in the Keras
  transfer-learning guide;
* phase 1 (TL): ImageNet backbone frozen with BatchNorm in inference mode, Adam 1e-3,
  10 epochs; phase 2 (FT): all layers, Adam 1e-5 (100x lower), 20 epochs, BatchNorm still in
  inference mode (Keras recipe). 30 epochs in all, as the authors' companion paper
  (arXiv 2604.08502) reports for the same three backbones;
* batch 32, constant learning rates, no weight decay, no early stopping, float32.

`demo` runs all three architectures on a 2-core CPU in about 6.5 to 11 minutes (two worker
processes; see the README): the REDUCED variant of the backbone (`jd.models.TINY[arch]`,
named as such in config.json), 1200 training phantoms drawn at 160 px and fed at 160 / 224 /
235 px to DenseNet201 / ResNet50V2 / InceptionV3 (`DEMO_INPUT_SIZES`: 5x5 / 7x7 / 6x6 maps at
the canonical layer; see `preset`), and, because ImageNet weights cannot be downloaded
offline, a short pretraining of the backbone on a DIFFERENT phantom task (where the lesion
is: none, or the lung quadrant that holds most lesion pixels; images from another seed),
drawn and trained at the phantoms' own 160 px (the backbones are fully convolutional), before
the frozen-backbone phase. Its phase 2 runs BatchNorm in TRAINING mode (the statistics of a
backbone pretrained for seconds are a poor fixed normaliser; measured on resnetv2_tiny: val
accuracy 0.94 vs 0.90 with BatchNorm frozen, same 8 epochs), at 3e-3 with cosine decay, and
recomputes the BatchNorm statistics after every epoch (`precise_bn_batches`; the moving
averages of a short epoch lag the weights).
`smoke` is for tests: tiny, a few steps per epoch.
"""

import dataclasses
import json
import math
import numbers
from typing import Any

from jaxdrift import models

PRESETS = ("paper", "demo", "smoke")
# The demo's input sizes (its phantoms are drawn at 160 px and resized): 5x5 / 7x7 / 6x6
# maps at the canonical layer (see `preset` for why).
DEMO_INPUT_SIZES = {"densenet201": 160, "resnet50v2": 224, "inceptionv3": 235}
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every choice of a training run; stored as DIR/config.json.

  Attributes:
    arch: paper architecture ("densenet201", "resnet50v2", "inceptionv3").
    reduced: train the reduced variant `jd.models.TINY[arch]` instead (demo/smoke).
    preset: name of the preset this config started from.
    data: dataset name for `jd.data.load` ("chest_xray5", "phantoms[/cfg]", "folder:PATH").
    data_options: builder keyword arguments (e.g. phantom sizes).
    data_dir: TFDS data directory (None: TFDS's default).
    weights: "imagenet", "none" or a Keras .h5 path for the backbone.
    image_size: square input size (None: the model's default).
    batch_size: global training batch size (divisible by the device count).
    eval_batch_size: global evaluation batch size (None: batch_size).
    epochs_tl: phase-1 epochs (frozen backbone).
    epochs_ft: phase-2 epochs (all layers).
    lr_tl: phase-1 learning rate.
    lr_ft: phase-2 learning rate.
    schedule: "constant" or "cosine" (per phase, decaying to 0 at the phase's end).
    weight_decay: AdamW decoupled weight decay on trainable kernels (0: Adam).
    dropout_rate: head dropout.
    label_smoothing: cross-entropy label smoothing.
    ft_train_bn: run BatchNorm in training mode in phase 2 (default: inference mode).
    precise_bn_batches: when BatchNorm trains, recompute its statistics at the end of every
      epoch as the average over this many training batches (in file order, no augmentation)
      instead of keeping the lagging moving averages (0: keep them). Validation, the
      checkpoints and the maps then see the weights' own statistics.
    augment: radiograph-safe training augmentation (`jd.data.Augment`).
    early_stopping: patience in epochs on validation AUC (0: off). When on, the named
      tl/ft checkpoints are the best epoch of their phase.
    max_steps_per_epoch: cap on training steps per epoch (0: full epochs; smoke runs).
    pretrain_epochs: epochs of backbone pretraining on the phantom proxy task (0: none).
    pretrain_examples: proxy-task training images.
    pretrain_lr: proxy-task learning rate.
    pretrain_image_size: square size the proxy images are drawn and trained at (None: the
      input size). The backbones are fully convolutional, so the weights carry over.
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
    seed: seed of initialisation, data order, augmentation and dropout.
  """

  arch: str = "inceptionv3"
  reduced: bool = False
  preset: str = "paper"
  data: str = "chest_xray5"
  data_options: dict = dataclasses.field(default_factory=dict)
  data_dir: str | None = None
  weights: str = "imagenet"
  image_size: int | None = None
  batch_size: int = 32
  eval_batch_size: int | None = None
  epochs_tl: int = 10
  epochs_ft: int = 20
  lr_tl: float = 1e-3
  lr_ft: float = 1e-5
  schedule: str = "constant"
  weight_decay: float = 0.0
  dropout_rate: float = 0.2
  label_smoothing: float = 0.0
  ft_train_bn: bool = False
  precise_bn_batches: int = 16
  augment: bool = True
  early_stopping: int = 0
  max_steps_per_epoch: int = 0
  pretrain_epochs: int = 0
  pretrain_examples: int = 2000
  pretrain_lr: float = 3e-3
  pretrain_image_size: int | None = None
  dtype: str = "float32"
  seed: int = 0

  @property
  def model_arch(self) -> str:
    """The architecture actually built (the reduced variant when `reduced`)."""
    return models.TINY[self.arch] if self.reduced else self.arch

  @property
  def input_size(self) -> int:
    return self.image_size or models.default_input_size(self.model_arch)

  def validate(self) -> "TrainConfig":
    """Raises ValueError naming the bad field, what it must be and what it is; returns self.

    Learning rates must be finite and positive; weight decay, label smoothing and
    dropout finite and in range; sizes and counts integers, positive where zero means
    nothing (batch sizes, pretraining images) and non-negative where zero means "off"
    (epochs of one phase, early stopping, the step cap, precise-BN batches).
    """
    if self.arch not in models.ARCHS:
      raise ValueError(f"unknown architecture {self.arch!r}; expected one of "
                       f"{', '.join(models.ARCHS)}")
    _check_int(self, "image_size", 1, optional=True)
    _check_int(self, "pretrain_image_size", 1, optional=True)
    min_size = models.spec(self.model_arch).min_size
    for name, size in (("image_size", self.input_size),
                       ("pretrain_image_size", self.pretrain_image_size)):
      if size is not None and size < min_size:
        raise ValueError(f"{name} {size} is below the minimum {min_size} of "
                         f"{self.model_arch}")
    if self.schedule not in ("constant", "cosine"):
      raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
    for name in ("batch_size", "pretrain_examples"):
      _check_int(self, name, 1)
    _check_int(self, "eval_batch_size", 1, optional=True)
    for name in ("epochs_tl", "epochs_ft", "early_stopping", "max_steps_per_epoch",
                 "precise_bn_batches", "pretrain_epochs"):
      _check_int(self, name, 0)
    _check_int(self, "seed", 0)
    if self.epochs_tl + self.epochs_ft == 0:
      raise ValueError("epochs_tl + epochs_ft is 0: nothing to train; set one of them to at "
                       "least 1")
    for name in ("lr_tl", "lr_ft", "pretrain_lr"):
      value = getattr(self, name)
      if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite learning rate above 0, got {value!r}; "
                         "pass e.g. 1e-3")
    for name, low, high in (("dropout_rate", 0.0, 1.0), ("label_smoothing", 0.0, 1.0)):
      value = getattr(self, name)
      if not _is_real(value) or not low <= value < high:
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}), got {value!r}")
    if not _is_real(self.weight_decay) or not 0.0 <= self.weight_decay < math.inf:
      raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
    for name in ("reduced", "ft_train_bn", "augment"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
    for name in ("data", "weights"):
      if not isinstance(getattr(self, name), str) or not getattr(self, name):
        raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
    return self

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["model_arch"], d["input_size"] = self.model_arch, self.input_size
    return d

  @classmethod
  def from_json(cls, d: dict) -> "TrainConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(config, name: str, minimum: int, *, optional: bool = False) -> None:
  """Raises ValueError unless config.<name> is an integer >= minimum (or None if optional)."""
  value = getattr(config, name)
  if optional and value is None:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ValueError(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}")


def preset(name: str, arch: str = "inceptionv3", **overrides) -> TrainConfig:
  """A preset config for `arch`, with field overrides (None values are ignored)."""
  overrides = {k: v for k, v in overrides.items() if v is not None}
  if name == "paper":
    base = TrainConfig(arch=arch, preset="paper")
  elif name == "demo":
    # 5x5 maps are the coarsest grid with cell centres inside every lesion zone of the
    # phantoms (3x3 has none: its side columns fall outside the lungs). On 5x5 maps (160 px,
    # 203 for InceptionV3) ResNet50V2's nodule maps and InceptionV3's consolidation and
    # diffuse maps missed the lesions (FT pointing game 0.04; 0.51, 0.40): 7x7 (224 px) and
    # 6x6 (235 px) find them, at 2x and 1.3x the compute. ResNet50V2 at 6x6 (192 px) puts a
    # cell column on the midline, which takes the peaks of the bilateral lesions (ground
    # glass 0.30). DenseNet's head learns slower: at 3e-3 its TL checkpoint stayed at chance
    # (validation accuracy 0.25), at 1e-2 it reaches 0.31. (Pretraining DenseNet at 1e-2 too
    # gave TL 0.42 but FT only 0.78.) Those runs had 2000 training phantoms at batch 32. On
    # 1200, ResNet50V2 and InceptionV3 learn more per image at batch 16 (FT validation
    # accuracy 0.925 / 0.945; at batch 32 0.89-0.895 / 0.755-0.865 in two runs), DenseNet201
    # at batch 32 over 8 FT epochs (0.915; at batch 16 over 6 epochs 0.84, and its maps
    # missed the lobar consolidations: pointing game 0.13).
    densenet = arch in ("densenet201", "densenet_tiny")
    lr_tl = 1e-2 if densenet else 3e-3
    base = TrainConfig(
        arch=arch, reduced=True, preset="demo", data="phantoms",
        data_options={"image_size": 160, "num_train": 1200, "num_validation": 200,
                      "num_test": 200, "seed": 0},
        image_size=DEMO_INPUT_SIZES.get(arch, 160),
        weights="none", batch_size=32 if densenet else 16, eval_batch_size=32, epochs_tl=2,
        epochs_ft=8 if densenet else 5, lr_tl=lr_tl, lr_ft=3e-3, schedule="cosine",
        dropout_rate=0.0, augment=False, ft_train_bn=True, precise_bn_batches=8,
        pretrain_epochs=2, pretrain_examples=1200, pretrain_lr=3e-3, pretrain_image_size=160)
  elif name == "smoke":
    base = TrainConfig(
        arch=arch, reduced=True, preset="smoke", data="phantoms/small", weights="none",
        batch_size=16, epochs_tl=1, epochs_ft=1, lr_tl=1e-3, lr_ft=1e-4, dropout_rate=0.2,
        augment=False, max_steps_per_epoch=3)
  else:
    raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
  if overrides.get("data", base.data) != base.data and "data_options" not in overrides:
    overrides["data_options"] = {}  # a preset's builder options belong to its own dataset
  return dataclasses.replace(base, **overrides).validate()


def dumps(config: TrainConfig) -> str:
  return json.dumps(config.to_json(), indent=2, sort_keys=True)
