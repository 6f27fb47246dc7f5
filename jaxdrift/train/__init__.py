"""Two-phase training: frozen-backbone transfer learning (TL), then fine-tuning (FT).

    import jaxdrift as jd
    config = jd.train.preset("demo", arch="resnet50v2")      # or "paper", "smoke"
    summary = jd.train.train(config, "runs/resnet50v2")     # resumable; see loop.py
    model, variables, cfg = jd.train.load_checkpoint("runs/resnet50v2", "tl")  # or "ft", 3

Modules: `config` (TrainConfig, presets), `state` (TrainState, freeze masks, optimisers with
a real freeze), `steps` (pure train/eval steps, data-parallel jit), `evaluate` (loss,
accuracy, ROC AUC, confusion matrix in JAX), `checkpoint` (orbax, per epoch and named),
`pretrain` (the demo's proxy-task backbone pretraining), `loop` (the two phases; the
workdir layout is documented there).
"""

from jaxdrift.train.checkpoint import CheckpointError, load_checkpoint, read_config
from jaxdrift.train.config import PRESETS, TrainConfig, preset
from jaxdrift.train.evaluate import classification_metrics, confusion_matrix, roc_auc
from jaxdrift.train.loop import WorkdirError, summary_table, train
from jaxdrift.train.state import TrainState, freeze_mask, frozen_paths, make_optimizer
from jaxdrift.train.steps import Phase, eval_step, forward, train_step
