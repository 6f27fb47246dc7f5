"""Input-resolution attributions: integrated gradients, SmoothGrad, expected gradients.

All three average input gradients of the score (sum_c weight_c * logit_c) over a set of
points; the points are evaluated `batch_points` at a time (each pass is one batched forward
and backward over batch_points x B images) inside a `lax.scan`, so memory stays bounded.
Randomness comes from explicit per-image keys [B] (`jax.random.key` typed keys): image i
uses only keys[i], so a batch gives the same attributions as its images one at a time.

| method                | attribution [H, W, C]                                            |
|-----------------------|------------------------------------------------------------------|
| integrated_gradients  | (x - b) * sum_k q_k grad(b + alpha_k (x - b)), quadrature nodes   |
|                       | alpha_k and weights q_k of `rule` on [0, 1] ("trapezoid" default, |
|                       | "midpoint", "gausslegendre"); completeness: the sum over pixels  |
|                       | and channels is score(x) - score(b) up to the quadrature error   |
| smoothgrad            | (1/n) sum_k grad(x + sigma eps_k), eps ~ N(0, 1), sigma =         |
|                       | noise_level * (max x - min x) per image (Smilkov et al. 2017)    |
| expected_gradients    | (1/n) sum_k (x - b_k) * grad(b_k + alpha_k (x - b_k)), b_k drawn  |
|                       | uniformly from `baselines`, alpha_k ~ U(0, 1) (Erion et al. 2021; |
|                       | captum's GradientShap without input noise); completeness holds   |
|                       | in expectation: E[sum] = score(x) - E_b[score(b)]                |
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

RULES = ("trapezoid", "midpoint", "gausslegendre")


def quadrature(steps: int, rule: str = "trapezoid"):
  """Nodes and weights of a quadrature rule on [0, 1], as float32 numpy arrays [steps]."""
  if steps < 1 or (rule == "trapezoid" and steps < 2):
    raise ValueError(f"steps must be >= 2 for trapezoid and >= 1 otherwise, got {steps}")
  if rule == "trapezoid":
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
  elif rule == "midpoint":
    alphas = (np.arange(steps) + 0.5) / steps
    weights = np.full(steps, 1.0 / steps)
  elif rule == "gausslegendre":
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (nodes + 1) / 2, weights / 2
  else:
    raise ValueError(f"unknown quadrature rule {rule!r}; expected one of {', '.join(RULES)}")
  return alphas.astype(np.float32), weights.astype(np.float32)


def input_gradients(model, variables, images, weights):
  """Logits and d (sum_c weights_c * logit_c) / d images, per image.

  BatchNorm runs in inference mode, so images do not interact and one backward pass of the
  summed score gives every image's own gradient.

  Args:
    model: a Flax module called as `model.apply(variables, x, train=False)` -> [N, C].
    variables: its variables.
    images: [N, H, W, Cin].
    weights: [N, C] logit weights (one-hot for a class).

  Returns:
    (logits [N, C], gradients [N, H, W, Cin] float32).
  """
  logits, vjp = jax.vjp(lambda x: model.apply(variables, x, train=False), images)
  (grads,) = vjp(weights.astype(logits.dtype))
  return logits, grads.astype(jnp.float32)


def _sum_over_points(model, variables, weights, point, n_points: int, batch_points: int,
                     shape):
  """sum_k scale_k * grad(input_k) over k < n_points, where (input_k, scale_k) = point(k).

  `point(k)` returns (inputs of `shape` [B, H, W, C], scales broadcastable to it) for one
  point index k (a traced int32). Points are evaluated `batch_points` at a time; the last
  chunk is padded with points whose contribution is masked to zero.
  """
  chunk = max(1, min(batch_points, n_points))
  n_chunks = math.ceil(n_points / chunk)
  ks = jnp.arange(n_chunks * chunk, dtype=jnp.int32).reshape(n_chunks, chunk)

  def body(total, ks):
    inputs, scales = jax.vmap(point)(jnp.minimum(ks, n_points - 1))  # [P, B, H, W, C]
    p, b = inputs.shape[:2]
    _, grads = input_gradients(model, variables, inputs.reshape((p * b,) + inputs.shape[2:]),
                               jnp.tile(weights, (p, 1)))
    scales = jnp.reshape(scales, scales.shape + (1,) * (inputs.ndim - scales.ndim))
    terms = scales * grads.reshape(inputs.shape)
    valid = (ks < n_points).reshape((p,) + (1,) * (terms.ndim - 1))
    return total + jnp.sum(jnp.where(valid, terms, 0.0), axis=0), None

  total, _ = jax.lax.scan(body, jnp.zeros(shape, jnp.float32), ks)
  return total


def integrated_gradients(model, variables, images, weights, baseline, *, steps: int = 64,
                         rule: str = "trapezoid", batch_points: int = 8):
  """Integrated gradients (Sundararajan et al. 2017) along the straight path from baseline.

  Args:
    model, variables: as in `input_gradients`.
    images: x, [B, H, W, C].
    weights: [B, K] logit weights.
    baseline: b, [B, H, W, C] (the caller broadcasts a scalar or a single image).
    steps: number of quadrature nodes.
    rule: "trapezoid" (default, includes both ends), "midpoint" or "gausslegendre".
    batch_points: nodes evaluated per batched pass.

  Returns:
    Attributions [B, H, W, C] float32.
  """
  alphas, quad = (jnp.asarray(a) for a in quadrature(steps, rule))
  images, baseline = images.astype(jnp.float32), baseline.astype(jnp.float32)
  diff = images - baseline

  def point(k):
    return baseline + alphas[k] * diff, quad[k]

  return diff * _sum_over_points(model, variables, weights, point, steps, batch_points,
                                 images.shape)


def smoothgrad(model, variables, images, weights, keys, *, n_samples: int = 25,
               noise_level: float = 0.15, batch_points: int = 8):
  """SmoothGrad: the input gradient averaged over Gaussian-noised copies of each image.

  Args:
    model, variables, images, weights: as in `integrated_gradients`.
    keys: one typed PRNG key per image, [B]; sample k of image i uses fold_in(keys[i], k).
    n_samples: noisy copies per image.
    noise_level: sigma as a fraction of each image's value range (max - min).
    batch_points: samples evaluated per batched pass.

  Returns:
    Mean gradients [B, H, W, C] float32.
  """
  images = images.astype(jnp.float32)
  sigma = noise_level * (jnp.max(images, axis=(1, 2, 3)) - jnp.min(images, axis=(1, 2, 3)))

  def noise(key, k):
    return jax.random.normal(jax.random.fold_in(key, k), images.shape[1:], jnp.float32)

  def point(k):
    eps = jax.vmap(noise, in_axes=(0, None))(keys, k)
    return images + sigma[:, None, None, None] * eps, 1.0 / n_samples

  return _sum_over_points(model, variables, weights, point, n_samples, batch_points,
                          images.shape)


def expected_gradients(model, variables, images, weights, keys, baselines, *,
                       n_samples: int = 32, batch_points: int = 8):
  """Expected gradients: integrated gradients averaged over random baselines and alphas.

  Args:
    model, variables, images, weights: as in `integrated_gradients`.
    keys: one typed PRNG key per image, [B]; sample k of image i draws its baseline index and
      alpha from fold_in(keys[i], k).
    baselines: the reference distribution, [M, H, W, C] (e.g. training images).
    n_samples: (baseline, alpha) draws per image.
    batch_points: draws evaluated per batched pass.

  Returns:
    Attributions [B, H, W, C] float32.
  """
  images = images.astype(jnp.float32)
  baselines = baselines.astype(jnp.float32)

  def draw(key, x, k):
    k_index, k_alpha = jax.random.split(jax.random.fold_in(key, k))
    base = baselines[jax.random.randint(k_index, (), 0, baselines.shape[0])]
    alpha = jax.random.uniform(k_alpha, (), jnp.float32)
    return base + alpha * (x - base), (x - base) / n_samples

  def point(k):
    return jax.vmap(draw, in_axes=(0, 0, None))(keys, images, k)

  return _sum_over_points(model, variables, weights, point, n_samples, batch_points,
                          images.shape)
