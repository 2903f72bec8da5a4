"""Overlapping tiles for pictures too large to run whole.

Pictures that fit are padded as the model pads (`data.geometry`'s padding rule, the same
as evaluation's). A picture with a side longer than `tile_size` is not downscaled -
CFRNet was trained at the dataset's own resolution, and shrinking the picture shrinks
the heads below the sizes it has learned, which changes the count - but cut into
overlapping tiles of `tile_size` along that axis. Every density cell is taken from
exactly one tile: the one whose kept part ("core") contains it, where cores split each
overlap at its middle, so each kept cell has at least `overlap / 2` pixels of context
towards every inner tile border and the stitched map covers the picture once. The count
of the stitched map therefore differs from the whole picture's only through what the
network sees beyond that context: GAM's global attention and the 128-pixel CFRM windows.
"""

from __future__ import annotations

from typing import NamedTuple

from cfrnet_jax.data.geometry import ceil_div, round_up


class Span(NamedTuple):
  """One tile along one axis, in pixels: it reads [start, stop) and keeps the density
  of [keep_start, keep_stop). Starts and keep boundaries are multiples of the density
  stride, so tile cells land on whole cells of the image's density map."""

  start: int
  stop: int
  keep_start: int
  keep_stop: int


def tile_spans(length: int, tile_size: int, overlap: int, cell: int) -> list[Span]:
  """The tiles covering [0, length) along one axis: one span when it fits in
  `tile_size`, else tiles of `tile_size` overlapping by at least `overlap`, the last
  one flush with the end (rounded to `cell`)."""
  if length <= tile_size:
    return [Span(0, length, 0, length)]
  step = tile_size - overlap
  last = round_up(length - tile_size, cell)
  starts = sorted({min(i * step, last) for i in range(ceil_div(length - tile_size, step) + 1)})
  bounds = (
      [0]
      + [
          (starts[i + 1] + starts[i] + tile_size) // 2 // cell * cell
          for i in range(len(starts) - 1)
      ]
      + [length]
  )
  return [
      Span(start, min(start + tile_size, length), bounds[i], bounds[i + 1])
      for i, start in enumerate(starts)
  ]


def check_tiling(tile_size: int, overlap: int, multiple: int, cell: int) -> None:
  if tile_size <= 0 or tile_size % multiple:
    raise ValueError(
        f"predict.tile_size = {tile_size} must be a positive multiple of "
        f"the model's padding multiple {multiple}."
    )
  if overlap < 0 or overlap % cell or overlap >= tile_size:
    raise ValueError(
        f"predict.tile_overlap = {overlap} must be a multiple of {cell} "
        f"in [0, tile_size = {tile_size})."
    )


def tile_side(length: int, tile_size: int, multiple: int) -> int:
  """The side of the model input for every tile of an axis of `length` pixels: the axis
  padded as the model pads it (`models.cfrnet.padded_side`), at most `tile_size` (a
  multiple of `multiple`), so that all tiles of a picture share one compiled shape."""
  return min(round_up(length, multiple), tile_size)


def cells_in_image(span: Span, cell: int) -> slice:
  """The density cells (of side `cell` pixels) that `span` keeps, in the picture's map."""
  return slice(span.keep_start // cell, ceil_div(span.keep_stop, cell))


def cells_in_tile(span: Span, cell: int) -> slice:
  """The same cells, indexed in the tile's map."""
  offset, kept = span.start // cell, cells_in_image(span, cell)
  return slice(kept.start - offset, kept.stop - offset)
