"""Input shapes for prediction: size buckets, and overlapping tiles for large images.

Buckets. XLA compiles a program per input shape, so every image is padded (bottom and
right, with the mean colour that normalises to zero, as the model pads itself) to a
bucket side: a multiple k of the padding multiple m, with k rounded up to a coarse
ladder - every k up to 8, then steps of k/4 (8, 10, 12, 14, 16, 20, 24, ...). That pads
a side by less than 25% beyond the multiple of m while sides from 1 to 2048 pixels fall
into 12 buckets per axis, so a folder of mixed sizes compiles a handful of times, not
once per image. The count is unchanged by the padding (the masked sum of
`evaluation.make_count_fn`; tested).

Tiles. An image with a side longer than `tile_size` is not downscaled - CFRNet was
trained at the dataset's own resolution, and shrinking the image shrinks the heads
below the sizes it has learned, which changes the count - but cut into overlapping
tiles of `tile_size` along that axis. Every density cell is taken from exactly one tile:
the one whose kept part ("core") contains it, where cores split each overlap at its
middle, so each kept cell has at least `overlap / 2` pixels of context towards every
inner tile border and the stitched map covers the image once. The count of the stitched
map therefore differs from the whole image's only through what the network sees beyond
that context: GAM's global attention and the 128-pixel CFRM windows.
"""

from __future__ import annotations

from typing import NamedTuple


class Span(NamedTuple):
  """One tile along one axis, in pixels: it reads [start, stop) and keeps the density
  of [keep_start, keep_stop). Starts and keep boundaries are multiples of the density
  stride, so tile cells land on whole cells of the image's density map."""
  start: int
  stop: int
  keep_start: int
  keep_stop: int


def bucket_side(length: int, multiple: int) -> int:
  """The padded side for an image side of `length` pixels (see the module docstring)."""
  k = max(1, -(-length // multiple))
  if k > 8:
    step = 2 ** (k.bit_length() - 3)
    k = -(-k // step) * step
  return k * multiple


def tile_spans(length: int, tile_size: int, overlap: int, cell: int) -> list[Span]:
  """The tiles covering [0, length) along one axis: one span when it fits in
  `tile_size`, else tiles of `tile_size` overlapping by at least `overlap`, the last
  one flush with the end (rounded to `cell`)."""
  if length <= tile_size:
    return [Span(0, length, 0, length)]
  step = tile_size - overlap
  last = -(-(length - tile_size) // cell) * cell
  starts = sorted({min(i * step, last) for i in range(-(-(length - tile_size) // step) + 1)})
  bounds = [0] + [(starts[i + 1] + starts[i] + tile_size) // 2 // cell * cell
                  for i in range(len(starts) - 1)] + [length]
  return [Span(start, min(start + tile_size, length), bounds[i], bounds[i + 1])
          for i, start in enumerate(starts)]


def check_tiling(tile_size: int, overlap: int, multiple: int, cell: int) -> None:
  if tile_size <= 0 or tile_size % multiple:
    raise ValueError(f"predict.tile_size = {tile_size} must be a positive multiple of "
                     f"the model's padding multiple {multiple}.")
  if overlap < 0 or overlap % cell or overlap >= tile_size:
    raise ValueError(f"predict.tile_overlap = {overlap} must be a multiple of {cell} "
                     f"in [0, tile_size = {tile_size}).")


def padded_side(length: int, tile_size: int, multiple: int) -> int:
  """The side every tile of an axis of `length` pixels is padded to."""
  return min(bucket_side(length, multiple), tile_size)
