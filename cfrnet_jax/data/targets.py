"""Ground-truth density and foreground targets, as pure jit-compatible functions.

Density (section 4 of the paper: fixed Gaussian kernel, sigma = 4). Each head at (x, y)
contributes a 2-D Gaussian centred on it, evaluated at pixel centres (j + 1/2, i + 1/2)
and normalised over the pixels *inside the image*, so every head contributes exactly 1
even when the border cuts its kernel. The Gaussian is separable, and so is its
normalisation over the image rectangle:

    density[i, j] = sum_p  gy_p[i] * gx_p[j],   gy_p = softmax_i(-(i + 1/2 - y_p)^2 / 2s^2)

i.e. density = Gy^T Gx with Gy (points, H) and Gx (points, W). A target at stride s is
the sum over s x s cells (sum pooling keeps the count), which is the same product with
Gy and Gx summed over each cell's rows and columns: no full-resolution map, no scatter,
and every level costs points x (H/s) x (W/s).

Foreground (the paper does not define its segmentation ground truth; spec section 5):
a cell is foreground when it overlaps the square of half-side `foreground_radius`
(2 sigma = 8 px by default) around some head. The square is separable like the kernel,
so the mask is (Iy^T Ix > 0) with the same shapes as above.

Points: (N, 2) float (x, y) in pixels, padded to a fixed N with a validity mask. Points
outside [0, W] x [0, H] (or not finite) are dropped and counted in `dropped`; a point on
the border line is kept (half its kernel is inside and is renormalised to 1). A map may
be larger than its image (a training crop of a small image, padded): `valid_size` says
how much of it is image, and the padding then gets no density and no foreground.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST  # counts must stay exact on TF32 matmul units.


def _cell_sums(per_pixel: jax.Array, stride: int) -> jax.Array:
  """(N, L) -> (N, ceil(L / stride)) sums over consecutive runs of `stride` pixels."""
  length = per_pixel.shape[1]
  padded = jnp.pad(per_pixel, ((0, 0), (0, -length % stride)))
  return padded.reshape(per_pixel.shape[0], -1, stride).sum(-1)


def _axis_weights(
    coords: jax.Array,
    length: int,
    valid_length: jax.Array,
    sigma: float,
    radius: float,
    stride: int,
) -> tuple[jax.Array, jax.Array]:
  """Per point: Gaussian mass and foreground-square overlap of each cell along one axis.

  Only pixels below `valid_length` (the image, not its padding) get mass or foreground.
  Returns (N, ceil(length / stride)) float32 arrays.
  """
  pixels = jnp.arange(length)
  in_image = pixels < valid_length
  offsets = (pixels + 0.5)[None, :] - coords[:, None]
  # A large negative logit (not -inf) keeps padding out of the softmax without NaNs.
  logits = jnp.where(in_image, -jnp.square(offsets) / (2.0 * sigma**2), -1e30)
  gaussian = jax.nn.softmax(logits, axis=1)
  # Pixel i spans [i, i + 1); it overlaps the square [c - radius, c + radius] unless it
  # lies wholly to one side.
  overlaps = ((jnp.abs(offsets) < radius + 0.5) & in_image).astype(jnp.float32)
  return _cell_sums(gaussian, stride), _cell_sums(overlaps, stride)


def density_targets(
    points: jax.Array,
    valid: jax.Array,
    image_size: tuple[int, int],
    *,
    strides: Sequence[int],
    sigma: float,
    foreground_radius: float,
    valid_size: jax.Array | None = None,
) -> dict:
  """Targets of one image.

  Args:
    points: (N, 2) float (x, y) pixel coordinates, padded.
    valid: (N,) bool, False for padding.
    image_size: static (height, width) of the image the points live in.
    strides: output strides; stride s gives maps of shape (ceil(H/s), ceil(W/s)).
    sigma: Gaussian sigma in pixels (`config.targets.sigma`).
    foreground_radius: half-side in pixels of each head's foreground square
      (`config.targets.foreground_radius`).
    valid_size: optional (2,) int (height, width) of the image inside a map of
      `image_size` padded at the bottom and right (a crop of a small image): padding
      gets no density and no foreground, and points must lie within this size.

  Returns:
    {'density': {s: (H_s, W_s) float32}, 'foreground': {s: (H_s, W_s) int32 in {0, 1}},
     'count': number of heads kept, 'dropped': number of valid points outside the image}.
  """
  height, width = image_size
  valid_height, valid_width = (
      (height, width) if valid_size is None else (valid_size[0], valid_size[1])
  )
  x, y = points[:, 0].astype(jnp.float32), points[:, 1].astype(jnp.float32)
  # False for NaN too.
  inside = (x >= 0) & (x <= valid_width) & (y >= 0) & (y <= valid_height)
  kept = valid & inside
  weight = kept.astype(jnp.float32)[:, None]
  # Dropped points keep finite (unused) coordinates so no NaN reaches the products.
  x, y = jnp.where(kept, x, 0.0), jnp.where(kept, y, 0.0)
  density, foreground = {}, {}
  for stride in strides:
    gauss_y, box_y = _axis_weights(y, height, valid_height, sigma, foreground_radius, stride)
    gauss_x, box_x = _axis_weights(x, width, valid_width, sigma, foreground_radius, stride)
    density[stride] = jnp.matmul(gauss_y.T, weight * gauss_x, precision=_HIGHEST)
    overlap = jnp.matmul(box_y.T, weight * box_x, precision=_HIGHEST)
    foreground[stride] = (overlap > 0).astype(jnp.int32)
  return {
      "density": density,
      "foreground": foreground,
      "count": kept.sum(),
      "dropped": (valid & ~inside).sum(),
  }


def batch_density_targets(
    points: jax.Array,
    valid: jax.Array,
    image_size: tuple[int, int],
    valid_size: jax.Array | None = None,
    **kwargs,
) -> dict:
  """`density_targets` over a batch: points (B, N, 2), valid (B, N), valid_size (B, 2)."""
  if valid_size is None:
    return jax.vmap(lambda p, v: density_targets(p, v, image_size, **kwargs))(points, valid)
  return jax.vmap(lambda p, v, s: density_targets(p, v, image_size, valid_size=s, **kwargs))(
      points, valid, valid_size
  )
