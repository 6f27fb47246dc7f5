"""ROAD: RemOve And Debias (Rong et al., ICML 2022), with noisy linear imputation.

Deletion with a constant baseline leaks the removal mask: the model can respond to the
SHAPE of the removed region (sharp edges, an unnatural patch) rather than to the missing
evidence, and a ranking's score then says more about that shape than about the evidence.
ROAD replaces each removed pixel by the weighted mean of its 8 neighbours, solved jointly
for all removed pixels (a sparse linear system), plus a little Gaussian noise, so that the
filled region carries no trace of where it was cut.

Imputation, as in the authors' `NoisyLinearImputer`: neighbour weights 1/6 (horizontal and
vertical) and 1/12 (diagonal); neighbours outside the image are dropped; each removed pixel
p satisfies sum_q w_pq (x_q - x_p) = 0, known pixels fixed, per channel. jaxdrift solves
that symmetric positive-definite system with Jacobi-preconditioned conjugate gradients
(stopping at relative residual `tol`) instead of a sparse direct solve;
then N(0, noise^2) is added to the imputed pixels only (in model input units).

Order "morf" (most relevant first) removes the top-ranked fraction of pixels: the score
should FALL fast (lower is better). "lerf" (least relevant first) removes the bottom-ranked
fraction: the score should stay HIGH (higher is better). Ranking, ties, rounding and
upsampling as in `deletion`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrift.faithfulness import runner
from jaxdrift.faithfulness.perturbation import TIE_RULE

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ORDERS = ("morf", "lerf")
# (row offset, column offset, weight) of the imputation's neighbours.
NEIGHBOURS = tuple((dy, dx, 1 / 12 if dy and dx else 1 / 6)
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def neighbour_sum(u):
  """sum_q w_pq u_q over the 8 neighbours q of every pixel p of u [H, W, C] (zero outside)."""
  h, w = u.shape[:2]
  padded = jnp.pad(u, ((1, 1), (1, 1), (0, 0)))
  return sum(weight * padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
             for dy, dx, weight in NEIGHBOURS)


def conjugate_gradients(matvec, rhs, precondition, tol, max_iter):
  """Preconditioned CG for an SPD operator; stops at ||r|| <= tol ||rhs|| or max_iter.

  (`jax.scipy.sparse.linalg.cg` solves the same; this loop carries five arrays and compiles
  in a fraction of its time under vmap.)
  """
  dot = lambda a, b: jnp.sum(a * b)
  limit = tol * tol * dot(rhs, rhs)
  z = precondition(rhs)
  init = (0, jnp.zeros_like(rhs), rhs, z, dot(rhs, z))

  def cond(state):
    i, _, r, _, _ = state
    return (i < max_iter) & (dot(r, r) > limit)

  def body(state):
    i, x, r, p, rz = state
    ap = matvec(p)
    alpha = rz / dot(p, ap)
    x = x + alpha * p
    r = r - alpha * ap
    z = precondition(r)
    rz_new = dot(r, z)
    return i + 1, x, r, z + (rz_new / rz) * p, rz_new

  return jax.lax.while_loop(cond, body, init)[1]


def impute(image, removed, noise_values, *, tol=1e-5, max_iter=None):
  """Noisy linear imputation of the removed pixels of one image.

  Args:
    image: [H, W, C].
    removed: [H, W] bool, True where the pixel is removed (at least one pixel kept).
    noise_values: [H, W, C] noise added to the imputed pixels (zeros for none).
    tol: relative residual at which conjugate gradients stop.
    max_iter: iteration cap (default 2 * (H + W)).

  Returns:
    [H, W, C]: known pixels unchanged, removed ones imputed plus noise.
  """
  image = image.astype(jnp.float32)
  unknown = removed[..., None].astype(jnp.float32)
  known = 1.0 - unknown
  degree = neighbour_sum(jnp.ones(image.shape[:2] + (1,), jnp.float32))
  rhs = unknown * neighbour_sum(image * known)

  def matvec(u):
    return unknown * (degree * u - neighbour_sum(unknown * u))

  max_iter = 2 * sum(image.shape[:2]) if max_iter is None else max_iter
  filled = conjugate_gradients(matvec, rhs, lambda r: r / degree, tol, max_iter)
  return known * image + unknown * (filled + noise_values)


def _prepare(images, extra, **options):
  del images, options
  return extra


def _perturb(image, keys, rank, count, step, *, order, noise, tol, max_iter):
  n = rank.size
  removed = rank < count if order == "morf" else rank >= n - count
  if noise > 0:
    values = noise * jax.random.normal(jax.random.fold_in(keys, step), image.shape)
  else:
    values = jnp.zeros(image.shape, jnp.float32)
  return impute(image, removed, values, tol=tol, max_iter=max_iter)


def road(logits_fn, images, maps, targets, *, fractions=FRACTIONS, order="morf", key=None,
         noise=0.01, score="probability", grid=None, tol=1e-5, max_iter=None, chunk=None,
         mesh=None):
  """ROAD scores of each map: the target's score after removing and imputing pixels.

  Args:
    logits_fn, images, maps, targets, score, grid, chunk, mesh: as in `deletion`.
    fractions: fractions of pixels removed, each in [0, 1).
    order: "morf" (most relevant first; lower is better) or "lerf" (least relevant first;
      higher is better).
    key: a typed PRNG key (split over the images) or one key per image [B] (then batched
      results equal per-image ones); needed when noise > 0.
    noise: standard deviation of the noise on imputed pixels, in model input units.
    tol, max_iter: conjugate-gradient tolerance and iteration cap (`impute`).

  Returns:
    {"curve": [B, F] scores, "average": [B] mean over the fractions, "fractions": [F]
    fractions actually removed, "settings": every choice, named}.
  """
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
  fractions = np.asarray(fractions, np.float64)
  if fractions.ndim != 1 or fractions.size == 0 or np.any((fractions < 0) | (fractions >= 1)):
    raise ValueError(f"fractions must be a non-empty sequence of values in [0, 1) (at least "
                     f"one pixel must stay to impute from), got {fractions.tolist()}")
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
  batch = images.shape[0]
  if noise > 0:
    if key is None:
      raise ValueError("road needs key=jax.random.key(seed) (or one key per image) for its "
                       "imputation noise; pass noise=0.0 for none")
    keys = jax.random.split(key, batch) if key.shape == () else key
    if keys.shape != (batch,):
      raise ValueError(f"key must be one typed key or [B] = [{batch}] keys, got shape "
                       f"{key.shape}")
  else:
    keys = jnp.zeros((batch,), jnp.int32)  # unused
  n = images.shape[1] * images.shape[2]
  counts = np.floor(fractions * n + 0.5).astype(np.int32)
  options = (("order", order), ("noise", float(noise)), ("tol", float(tol)),
             ("max_iter", max_iter))
  curve = runner.evaluate(logits_fn, images, maps, targets, counts, perturb=_perturb,
                          prepare=_prepare, options=options, extra=keys, score=score,
                          grid=grid, chunk=chunk, mesh=mesh)
  settings = {"method": f"road/{order}", "score": score, "ties": TIE_RULE,
              "imputation": f"noisy linear (8 neighbours, 1/6 and 1/12), noise sd {noise}, "
                            f"CG tol {tol}",
              "rounding": "round(fraction * H * W), halves up"}
  return {"curve": curve, "average": jnp.mean(curve, axis=1), "fractions": counts / n,
          "settings": settings}
