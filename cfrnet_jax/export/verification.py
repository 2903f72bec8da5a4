"""Checking an exported file against the JAX model before it is written into place.

The file is loaded back (`runtime.ExportedModel`: onnxruntime for ONNX,
`jax.export.deserialize` for StableHLO) and run on one test picture; its density map
must agree with the JAX model's to `VERIFY_TOLERANCE` of the output scale (the largest
density value) and its count to as much per cell, else `ExportVerificationError` says
by how much. The test picture is a deterministic pattern (`sample_picture`) or a picture
the user gives, prepared as predict mode prepares it (`verification_picture`), so that
a user who verifies on one of their own photos gets the count predict gives for it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import ml_collections
import numpy as np

from cfrnet_jax.data.geometry import mean_colour, pad_image
from cfrnet_jax.export.runtime import ExportedModel, Signature
from cfrnet_jax.inference.user_images import ImageSource, load_picture

# Largest |exported - JAX| density difference allowed, as a fraction of the output scale.
VERIFY_TOLERANCE = 1e-4
# Test picture of a symbolic-size export (not a multiple of 128, so padding is exercised).
DEFAULT_VERIFY_SIZE = (300, 420)
TINY = 1e-30  # the output scale of an all-zero density map, for relative figures


class ExportVerificationError(RuntimeError):
  """The exported model's output differs from the JAX model's beyond the tolerance."""


@dataclasses.dataclass(frozen=True)
class Verification:
  """The exported file run on the test picture, against the JAX model."""

  picture_size: tuple[int, int]  # (height, width) of the test picture
  max_abs_diff: float  # largest |exported - JAX| density value on it
  scale: float  # largest |JAX density| on it
  count: float  # the exported model's count on it
  tolerance: float  # the VERIFY_TOLERANCE it was held to


def sample_picture(height: int, width: int, seed: int = 0) -> np.ndarray:
  """(height, width, 3) uint8: smooth shapes plus noise, deterministic for a seed, so the
  verification covers the model's whole input range and no two cells look alike."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
  picture = np.zeros((height, width, 3), np.float32)
  for channel in range(3):
    fy, fx, phase = rng.uniform(0.01, 0.2, 2).tolist() + [rng.uniform(0, 6.3)]
    picture[..., channel] = 127.5 * (1 + np.sin(fy * rows + phase) * np.cos(fx * cols))
  picture += rng.normal(0, 20, picture.shape)
  return np.clip(picture, 0, 255).astype(np.uint8)


def verification_picture(
    config: ml_collections.ConfigDict, signature: Signature, source: ImageSource | None = None
) -> np.ndarray:
  """The (h, w, 3) uint8 test picture of an export.

  Without `source`: `sample_picture` at the exported size (`DEFAULT_VERIFY_SIZE` when it
  is symbolic). A given picture (a path, PIL image or array: what `CrowdCounter.predict`
  takes) is loaded as predict mode loads it, by the same function
  (`user_images.load_picture`: transparency over the mean colour of `data.mean`, the
  `predict.max_megapixels` limit, resized to `data.max_side`), so that a symbolic-size
  export verifies on the pixels predict counts, and its count there is predict's (for a
  picture that runs as one tile). A fixed-size export keeps the picture's top-left
  height x width (a tile, as predict cuts a larger picture) and fills what the picture
  lacks with the mean colour (`geometry.pad_image`, as predict pads its input)."""
  size = (signature.height, signature.width)
  if source is None:
    return sample_picture(*(DEFAULT_VERIFY_SIZE if signature.height is None else size))
  background = mean_colour(config.data.mean)
  view, _ = load_picture(source, background, config.predict.max_megapixels, config.data.max_side)
  if signature.height is None or view.shape[:2] == size:
    return view
  return pad_image(view[: signature.height, : signature.width], size, background)


def verify(infer, out: Path, signature: Signature, picture: np.ndarray) -> Verification:
  """The exported file at `out` against the JAX function `infer` on `picture`; raises
  ExportVerificationError beyond the tolerance."""
  batch = picture[None].astype(signature.input_dtype)
  expected, expected_count = jax.device_get(jax.jit(infer)(batch))
  exported = ExportedModel(out, signature=signature, check_files=False)
  density, count = exported(batch)
  if density.shape != expected.shape or count.shape != expected_count.shape:
    raise ExportVerificationError(
        f"The exported {out} returned density {density.shape} and count {count.shape}; "
        f"the JAX model returns {expected.shape} and {expected_count.shape}."
    )
  scale = float(np.max(np.abs(expected)))
  max_abs_diff = float(np.max(np.abs(density.astype(np.float64) - expected)))
  where = f"on a {picture.shape[0]}x{picture.shape[1]} test picture"
  if not np.isfinite(max_abs_diff) or max_abs_diff > VERIFY_TOLERANCE * max(scale, TINY):
    raise ExportVerificationError(
        f"The exported {out.name} does not reproduce the JAX model {where}: its density "
        f"differs by up to {max_abs_diff:.3g}, {max_abs_diff / max(scale, TINY):.3g} of the "
        f"output scale {scale:.3g} (allowed: {VERIFY_TOLERANCE:g}). Nothing was written."
    )
  # The count: each cell may differ by the tolerance, so the sum by that much per cell.
  count_diff = float(np.max(np.abs(count.astype(np.float64) - expected_count)))
  allowed = VERIFY_TOLERANCE * max(float(np.abs(expected).sum()), TINY)
  if not np.isfinite(count_diff) or count_diff > allowed:
    raise ExportVerificationError(
        f"The exported {out.name} returns a count {count_diff:.3g} away from the JAX model's "
        f"{where} (allowed: {allowed:.3g}). Nothing was written."
    )
  size = (int(picture.shape[0]), int(picture.shape[1]))
  return Verification(size, max_abs_diff, scale, float(count[0]), VERIFY_TOLERANCE)
