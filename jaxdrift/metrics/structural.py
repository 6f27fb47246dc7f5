"""Structural similarity (SSIM) of two attribution maps [H, W].

Definition (Wang et al. 2004 with Gaussian weighting, as skimage's
`structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`):
each map is divided by its maximum (so data_range = 1 and SSIM is invariant to positive
scaling); local means, variances and covariance come from a Gaussian filter with standard
deviation `sigma` pixels truncated at `truncate * sigma`, with reflected borders
(scipy.ndimage mode "reflect": d c b a | a b c d | d c b a);

  SSIM(p) = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_aa + s_bb + C2)),
  C1 = k1^2, C2 = k2^2, and the result is the mean of SSIM(p) over ALL pixels.

Unlike skimage, the border is not cropped before averaging: attribution maps at feature
resolution are 7x7 or 8x8, smaller than the 11x11 window. The numpy reference is
`scipy.ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=truncate)` per field.
"""

import jax.numpy as jnp

from jaxdrift.geometry import gaussian_filter
from jaxdrift.metrics import maps as maps_lib


def ssim(a, b, sigma=1.5, truncate=3.5, k1=0.01, k2=0.03):
  """Mean SSIM of two maps a, b [H, W] after dividing each by its maximum.

  Args:
    a, b: [H, W] maps (non-negative attribution maps).
    sigma: Gaussian window standard deviation in pixels.
    truncate: window radius in standard deviations (radius = int(truncate * sigma + 0.5)).
    k1, k2: the SSIM stabilisers, C1 = k1^2 and C2 = k2^2 for data range 1.

  Returns:
    Scalar in [-1, 1]; 1 for identical maps (up to a positive factor); NaN if either map is
    invalid.
  """
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  x = a / jnp.max(a)
  y = b / jnp.max(b)
  # Variances as E[x^2] - E[x]^2 cancel in float32; centring on the global means first
  # makes the second moments small and leaves the (shift-invariant) covariances exact.
  xm, ym = maps_lib.fsum(x) / x.size, maps_lib.fsum(y) / y.size
  xc, yc = x - xm, y - ym
  fields = gaussian_filter(jnp.stack([xc, yc, xc * xc, yc * yc, xc * yc]), sigma, truncate)
  mu_xc, mu_yc, e_xx, e_yy, e_xy = fields
  s_xx = e_xx - mu_xc * mu_xc
  s_yy = e_yy - mu_yc * mu_yc
  s_xy = e_xy - mu_xc * mu_yc
  mu_x, mu_y = mu_xc + xm, mu_yc + ym
  c1, c2 = k1 ** 2, k2 ** 2
  num = (2.0 * mu_x * mu_y + c1) * (2.0 * s_xy + c2)
  den = (mu_x * mu_x + mu_y * mu_y + c1) * (s_xx + s_yy + c2)
  value = maps_lib.fsum(num / den) / a.size
  valid = maps_lib.is_valid(a) & maps_lib.is_valid(b)
  return jnp.where(valid, value, jnp.nan)
