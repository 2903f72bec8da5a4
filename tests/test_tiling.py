"""Tiles of large pictures: cores that partition each axis, with context around them."""

import pytest

from cfrnet_jax.inference import tiling


@pytest.mark.parametrize("length", [1, 100, 512, 513, 700, 1067, 1600, 5000])
def test_tile_cores_partition_the_axis(length):
  spans = tiling.tile_spans(length, 512, 128, 4)
  assert spans[0].keep_start == 0 and spans[-1].keep_stop == length
  for span, following in zip(spans, spans[1:]):
    assert span.keep_stop == following.keep_start
    # Every kept pixel has >= overlap/2 - cell of context towards inner borders.
    assert following.start <= following.keep_start - 60 and span.keep_stop + 60 <= span.stop
  for span in spans:
    assert span.start % 4 == 0 and span.keep_start % 4 == 0
    assert span.start <= span.keep_start < span.keep_stop <= span.stop
    assert span.stop - span.start == min(length, 512) or span.stop == length


def test_tiling_settings_that_would_misplace_cells_are_refused():
  with pytest.raises(ValueError, match="tile_size = 500 must be a positive multiple"):
    tiling.check_tiling(500, 128, 128, 4)
  with pytest.raises(ValueError, match="tile_overlap = 130 must be a multiple of 4"):
    tiling.check_tiling(512, 130, 128, 4)


def test_every_tile_of_an_axis_has_one_input_side():
  """An axis that fits is padded as the model pads it; the tiles of a longer one are all
  padded to `tile_size`, the last (shorter by up to a cell) included: one compiled shape."""
  assert tiling.tile_side(100, 512, 128) == 128
  spans = tiling.tile_spans(1067, 512, 128, 4)
  assert {tiling.tile_side(span.stop - span.start, 512, 128) for span in spans} == {512}
