"""Classification metrics in JAX: loss, accuracy, one-vs-rest ROC AUC, confusion matrix.

    logits, labels, mask = collect(eval_fn, state, batches)   # whole split, padded
    m = classification_metrics(logits, labels, mask)           # jit-able, padding ignored

ROC AUC is the Mann-Whitney statistic: for class c, the probability that a random positive
(label c) scores higher than a random negative, ties counting 1/2, with scores the softmax
probabilities of class c (what `sklearn.metrics.roc_auc_score(..., multi_class="ovr",
average="macro")` computes). It is evaluated with two sorted searches per class, O(N log N),
and summed as per-positive fractions in [0, 1] so float32 stays exact to ~1e-7 for any N.
The macro average is over classes that have both positives and negatives (NaN if none).

A model whose logits are not all finite (a diverged run) gets NaN loss, accuracy, AUC,
sensitivity and specificity, never a plausible number: NaN scores have no order, and
`argmax` of a NaN row is an arbitrary class. `finite` records which case it was, and
`diverged(metrics)` says so in one call.
"""

import math


import jax
import jax.numpy as jnp
import numpy as np
import optax


def roc_auc(scores, positive, valid):
  """One-vs-rest ROC AUC of one class.

  Args:
    scores: float [N], higher = more likely positive.
    positive: bool [N], True for the class's examples.
    valid: bool [N], False for padding (ignored).

  Returns:
    float32 scalar in [0, 1]; NaN when there are no valid positives or no valid negatives,
    or when any valid score is not finite (NaN / Inf scores have no meaningful order).
  """
  finite = jnp.all(jnp.isfinite(scores) | ~valid)
  scores = jnp.where(jnp.isfinite(scores), scores, 0.0)  # keeps the searches well-defined
  negative = valid & ~positive
  positive = valid & positive
  neg_sorted = jnp.sort(jnp.where(negative, scores, jnp.inf))
  below = jnp.searchsorted(neg_sorted, scores, side="left")
  at_or_below = jnp.searchsorted(neg_sorted, scores, side="right")
  num_neg = jnp.sum(negative)
  num_pos = jnp.sum(positive)
  # Per positive: (#neg below + #neg tied / 2) / #neg, in [0, 1].
  fraction = (below + at_or_below).astype(jnp.float32) / (2.0 * jnp.maximum(num_neg, 1))
  auc = jnp.sum(jnp.where(positive, fraction, 0.0)) / jnp.maximum(num_pos, 1)
  return jnp.where(finite & (num_pos > 0) & (num_neg > 0), auc, jnp.nan)


def confusion_matrix(labels, predictions, mask, num_classes: int):
  """int32 [C, C]: rows true class, columns predicted class; padding ignored."""
  return jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, predictions].add(
      mask.astype(jnp.int32))


def classification_metrics(logits, labels, mask) -> dict:
  """Metrics of a whole split.

  Args:
    logits: float [N, C].
    labels: int [N].
    mask: bool [N]; False rows (padding) are ignored.

  Returns:
    dict of jax arrays: loss, accuracy, auc (macro one-vs-rest), auc_per_class [C],
    sensitivity [C] (recall), specificity [C], confusion [C, C], count, finite (bool: every
    unpadded logit is finite). When `finite` is False every rate above is NaN.
  """
  num_classes = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  finite = jnp.all(jnp.isfinite(logits) | ~mask[:, None])
  weights = mask.astype(jnp.float32)
  count = jnp.sum(weights)
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  loss = jnp.sum(jnp.where(mask, per_example, 0.0)) / jnp.maximum(count, 1.0)  # 0 * NaN
  predictions = jnp.argmax(logits, -1)
  accuracy = jnp.sum((predictions == labels) * weights) / jnp.maximum(count, 1.0)
  probs = jax.nn.softmax(logits, -1)
  classes = jnp.arange(num_classes)
  auc_per_class = jax.vmap(lambda c: roc_auc(probs[:, c], labels == c, mask))(classes)
  auc = jnp.nanmean(auc_per_class)
  confusion = confusion_matrix(labels, predictions, mask, num_classes)
  total = jnp.sum(confusion)
  true_count = jnp.sum(confusion, axis=1)
  predicted_count = jnp.sum(confusion, axis=0)
  hits = jnp.diagonal(confusion)
  sensitivity = hits / jnp.maximum(true_count, 1)
  true_negatives = total - true_count - predicted_count + hits
  specificity = true_negatives / jnp.maximum(total - true_count, 1)
  rates = {"loss": loss, "accuracy": accuracy, "auc": auc, "auc_per_class": auc_per_class,
           "sensitivity": sensitivity.astype(jnp.float32),
           "specificity": specificity.astype(jnp.float32)}
  rates = {k: jnp.where(finite, v, jnp.nan) for k, v in rates.items()}
  return {**rates, "confusion": confusion, "count": count.astype(jnp.int32),
          "finite": finite}


def diverged(metrics: dict) -> bool:
  """True when `metrics` (of `classification_metrics` / `evaluate`) come from a model whose
  logits or loss are not finite: training diverged, and its numbers mean nothing."""
  if not bool(metrics.get("finite", True)):
    return True
  loss = metrics.get("loss")
  return loss is None or not math.isfinite(float(loss))


def collect(eval_fn, state, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Runs `eval_fn(state, batch)` over every batch and concatenates on the host.

  Returns:
    (logits [N, C], labels [N], mask [N]) as numpy, padding included (mask False).
  """
  keys = ("image", "label", "mask")
  outs = [jax.device_get(eval_fn(state, {k: b[k] for k in keys if k in b})) for b in batches]
  if not outs:
    raise ValueError("the evaluation split yielded no batches")
  return tuple(np.concatenate([o[k] for o in outs]) for k in ("logits", "label", "mask"))


_metrics_jit = jax.jit(classification_metrics)


def evaluate(eval_fn, state, batches) -> dict:
  """`classification_metrics` of a whole split, as plain Python numbers and lists."""
  logits, labels, mask = collect(eval_fn, state, batches)
  return to_python(_metrics_jit(logits, labels, mask))


def to_python(metrics: dict) -> dict:
  """jax/numpy values -> floats, ints and nested lists (JSON-ready)."""
  out = {}
  for k, v in metrics.items():
    a = np.asarray(v)
    out[k] = a.item() if a.ndim == 0 else a.tolist()
  return out
