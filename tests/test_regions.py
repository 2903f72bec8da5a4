"""Counts inside regions of interest: exact totals, additivity, agreement with a
supersampled reference, real annotations, and clear errors for malformed regions."""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import shapely
from PIL import Image

from cfrnet_jax.data.targets import density_targets
from cfrnet_jax.inference.regions import (
    Region,
    cell_coverage,
    check_regions,
    load_regions,
    parse_regions,
    region_counts,
)
from tests.conftest import sht_sample_annotations

SIGMA = 4.0  # the project's density kernel (config.targets.sigma)


def random_density(image_size, seed=0):
  """A float32 map of people per cell for a model image of `image_size` (H, W)."""
  shape = (math.ceil(image_size[0] / 4), math.ceil(image_size[1] / 4))
  return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def rectangle(width, height):
  return [[0, 0], [width, 0], [width, height], [0, height]]


@pytest.mark.parametrize(
    "picture_size, model_size",
    [
        ((48, 32), (48, 32)),  # (W, H), multiples of 4
        ((50, 37), (50, 37)),  # the last row and column of cells are cut by the border
        ((75, 55), (50, 37)),  # resized down, sx != sy
        ((30, 21), (61, 43)),  # resized up
    ],
)
def test_a_polygon_covering_the_whole_picture_counts_the_total(picture_size, model_size):
  (picture_width, picture_height), (width, height) = picture_size, model_size
  density = random_density((height, width))
  outline = rectangle(picture_width, picture_height)
  regions = parse_regions(
      {"counter-clockwise": outline, "clockwise, closed": (outline + outline[:1])[::-1]},
      "regions argument",
  )
  scale = (width / picture_width, height / picture_height)
  counts = region_counts(density, regions, scale, (height, width))
  total = density.astype(np.float64).sum()
  assert list(counts) == ["counter-clockwise", "clockwise, closed"]
  for count in counts.values():
    assert count == pytest.approx(total, rel=1e-9)


def test_halves_split_along_a_slanted_line_add_up_to_the_total():
  picture_width, picture_height, width, height = 75, 55, 50, 37
  scale = (width / picture_width, height / picture_height)
  left_y, right_y = 13.3, 41.7  # the cut, from (0, 13.3) to (75, 41.7): never a cell border
  top = [[0, 0], [75, 0], [75, right_y], [0, left_y]]
  bottom = [[0, left_y], [75, right_y], [75, 55], [0, 55]]
  regions = parse_regions(
      [{"name": "top", "polygon": top}, {"name": "bottom", "polygon": bottom}], "x"
  )
  density = random_density((height, width), seed=1)
  counts = region_counts(density, regions, scale, (height, width))
  total = density.astype(np.float64).sum()
  assert counts["top"] + counts["bottom"] == pytest.approx(total, rel=1e-9)
  assert min(counts.values()) > 0.2 * total
  # Cell by cell: every cell is shared between the halves, and the line really cuts cells
  # (at least one in every column), so the sum exercises the fractional weights.
  top_cover, bottom_cover = (
      cell_coverage(region.polygon * scale, density.shape, (height, width)) for region in regions
  )
  np.testing.assert_allclose(top_cover + bottom_cover, 1.0, rtol=0, atol=1e-12)
  cut = (top_cover > 1e-6) & (top_cover < 1 - 1e-6)
  assert cut.any(axis=0).all()


def inside_even_odd(x, y, vertices):
  """Point-in-polygon by the even-odd rule: a ray from (x, y) towards +x crosses the
  boundary an odd number of times exactly when the point is inside."""
  inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), bool)
  for (x1, y1), (x2, y2) in zip(vertices, np.roll(vertices, -1, axis=0)):
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):  # horizontal edges never straddle
      crossing_x = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    inside ^= straddles & (x < crossing_x)
  return inside


def supersampled_coverage(vertices, image_size, samples):
  """Each cell's in-image fraction inside the polygon, from samples x samples points at
  the centres of a regular grid over the cell (points beyond the image left out)."""
  height, width = image_size
  offsets = (np.arange(samples) + 0.5) * 4 / samples
  ys = (np.arange(math.ceil(height / 4)) * 4)[:, None] + offsets  # (rows, samples)
  xs = (np.arange(math.ceil(width / 4)) * 4)[:, None] + offsets  # (cols, samples)
  y, x = ys[:, None, :, None], xs[None, :, None, :]  # (rows, cols, samples, samples)
  in_image = (x < width) & (y < height)
  inside = inside_even_odd(x, y, np.asarray(vertices)) & in_image
  return inside.sum((2, 3)) / in_image.sum((2, 3))


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.8, 1.25)])
def test_a_triangle_matches_a_supersampled_reference(scale):
  # The model image is 42 x 30: its last column and row of cells are half cells. An edge
  # runs down the last column, and one vertex lies in the last row.
  height, width = 30, 42
  model_triangle = np.array([[3.3, 2.7], [41.7, 3.9], [40.6, 29.3]])
  picture_triangle = model_triangle / scale  # what the user drew on the picture
  density = random_density((height, width), seed=2)
  samples = 32
  reference = supersampled_coverage(model_triangle, (height, width), samples)
  # Tolerance: a straight edge crossing a cell misclassifies at most half a sample per
  # sample column (or row), i.e. 1/(2 * samples) of the cell; cells holding a vertex
  # have two edges, so no cell may be off by more than 1 / samples. Taking edge cells
  # whole or not at all, or dividing the half cells by 16, is off by far more.
  tolerance = 1 / samples
  coverage = cell_coverage(model_triangle, density.shape, (height, width))
  assert np.abs(coverage - reference).max() <= tolerance
  edge_cells = (reference > 0) & (reference < 1)
  assert edge_cells[:, -1].all() and edge_cells[-1].any()  # the half cells are tested
  for vertices in (picture_triangle, picture_triangle[::-1]):  # either orientation
    (count,) = region_counts(
        density, [Region("triangle", vertices)], scale, (height, width)
    ).values()
    expected = float(np.sum(density * reference))
    assert abs(count - expected) <= tolerance * density[edge_cells].sum()


def test_regions_on_a_real_annotated_photo_count_its_heads():
  path, heads = sht_sample_annotations(3)
  with Image.open(path) as image:
    image_size = image.size[::-1]
  assert image_size == (768, 1024) and len(heads) == 11
  # Jitted: one compilation instead of one per operation (about 1 s rather than 6).
  targets = jax.jit(
      lambda points, valid: density_targets(
          points, valid, image_size, strides=(4,), sigma=SIGMA, foreground_radius=8.0
      )
  )(jnp.asarray(heads, jnp.float32), jnp.ones(len(heads), bool))
  density = np.asarray(targets["density"][4])
  # The four people in the lower right, each at least 6 sigma from the edge of the
  # region and every other head at least 6 sigma outside it, so each contributes all of
  # its density or none (Gaussian mass beyond 6 sigma: 1e-9).
  lower_right = np.array([[560, 520], [1010, 575], [1000, 665], [565, 630]], np.float64)
  assert inside_even_odd(heads[:, 0], heads[:, 1], lower_right).sum() == 4
  boundary = shapely.LinearRing(lower_right)
  assert shapely.distance(boundary, shapely.points(heads)).min() >= 6 * SIGMA
  regions = parse_regions(
      {"lower right": lower_right, "whole": rectangle(1024, 768)}, "regions argument"
  )
  check_regions(regions, 1024, 768, "IMG_3.jpg")
  counts = region_counts(density, regions, (1.0, 1.0), image_size)
  assert counts["whole"] == pytest.approx(11, abs=1e-4)
  assert counts["lower right"] == pytest.approx(4, abs=1e-3)
  # Half a person: the head at (398, 258) is the centre of cell (64, 99), and its density
  # map is point-symmetric about it, so any straight edge through it leaves exactly half
  # of its density on each side - whatever the angle, with the cells it cuts weighted by
  # area. The other two heads on the left are more than 6 sigma from every edge.
  assert np.abs(heads - [398, 258]).max(axis=1).min() < 1e-9
  for top_x in (358.0, 398.0, 300.0, 470.0):
    bottom_x = 398 + (398 - top_x) * (768 - 258) / 258
    left = parse_regions({"left": [[0, 0], [top_x, 0], [bottom_x, 768], [0, 768]]}, "x")
    assert region_counts(density, left, (1.0, 1.0), image_size)["left"] == pytest.approx(
        2.5, abs=1e-5
    )


TRIANGLE = [[0, 0], [10, 0], [0, 10]]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gate", r"regions argument: expected a list of regions .* got str"),
        ([[0, 0], [1, 0], [0, 1]], r"regions argument: region at index 0 must be an object"),
        ([], r"regions argument: no regions given"),
        ([{"polygon": TRIANGLE}], r'regions argument: region at index 0 has no "name"'),
        (
            [{"name": "a", "polygon": TRIANGLE}, {"name": "gate"}],
            r"regions argument: region 'gate' has no \"polygon\"",
        ),
        (
            [{"name": 7, "polygon": TRIANGLE}],
            r"regions argument: region at index 0 has a name of type int; names must be strings",
        ),
        ({"": TRIANGLE}, r"regions argument: region at index 0 has an empty name"),
        (
            [{"name": "gate", "polygon": TRIANGLE}, {"name": "gate", "polygon": TRIANGLE}],
            r"regions argument: region name 'gate' is used twice \(regions at index 0 and 1\)",
        ),
        (
            {"gate": [[0, 0], [5, 5]]},
            r"regions argument: region 'gate': the polygon has 2 distinct vertices; at least 3",
        ),
        (
            {"gate": [[0, 0], [5, 5], [0, 0]]},  # closed, but only two distinct vertices
            r"region 'gate': the polygon has 2 distinct vertices",
        ),
        ({"gate": "0,0 5,0 0,5"}, r"region 'gate': the polygon must be a list of \[x, y\]"),
        ({"gate": [[0, 0], [5], [0, 5]]}, r"region 'gate': vertex 1 \[5\] is not two finite"),
        ({"gate": [[0, 0], [5, 0, 1], [0, 5]]}, r"vertex 1 \[5, 0, 1\] is not two finite"),
        ({"gate": [[0, 0], ["5", 0], [0, 5]]}, r"vertex 1 \['5', 0\] is not two finite"),
        ({"gate": [[0, 0], [5, math.nan], [0, 5]]}, r"vertex 1 \[5, nan\] is not two finite"),
        ({"gate": [[0, 0], [True, 0], [0, 5]]}, r"vertex 1 \[True, 0\] is not two finite"),
        (
            {"gate": [[0, 0], [4, 4], [4, 0], [0, 4]]},  # a bow tie
            r"region 'gate': the polygon is self-intersecting \(shapely: Self-intersection",
        ),
        (
            {"gate": [[0, 0], [4, 0], [4, 4], [2, 0], [0, 4]]},  # the ring touches itself
            r"region 'gate': the polygon is self-intersecting \(shapely: Ring Self-intersection",
        ),
        ({"gate": [[0, 0], [2, 2], [5, 5]]}, r"region 'gate': the polygon has zero area"),
    ],
)
def test_malformed_regions_are_refused_naming_source_region_and_problem(spec, message):
  with pytest.raises(ValueError, match=message):
    parse_regions(spec, "regions argument")


def test_regions_load_from_json_files(tmp_path):
  square = [[10, 10], [30, 10], [30, 30], [10, 30]]
  path = tmp_path / "regions.json"
  path.write_text(
      json.dumps(
          {
              "regions": [
                  {"name": "gate", "polygon": square + square[:1]},
                  {"name": "platform", "polygon": [[0.5, 40], [60, 42.5], [31, 64]]},
              ]
          }
      )
  )
  regions = load_regions(path)
  assert [region.name for region in regions] == ["gate", "platform"]
  np.testing.assert_array_equal(regions[0].polygon, square)  # the closing vertex dropped
  assert regions[1].polygon.dtype == np.float64 and regions[1].polygon.shape == (3, 2)
  assert not regions[0].polygon.flags.writeable
  bare = tmp_path / "bare.json"
  bare.write_text(json.dumps([{"name": "gate", "polygon": square}]))
  np.testing.assert_array_equal(load_regions(str(bare))[0].polygon, square)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"regions": [{"name": "gate", "polygon": [[0, 0], [1, 0]', r"not valid JSON"),
        ("42", r"expected a list of regions .* got int"),
        ('{"gate": [[0, 0], [10, 0], [0, 10]]}', r'the JSON object has no "regions" key'),
        ('{"regions": "gate"}', r"expected a list of regions .* got str"),
        (
            '[{"name": "gate", "polygon": [[0, 0], [4, 4], [4, 0], [0, 4]]}]',
            r"region 'gate': the polygon is self-intersecting",
        ),
        ('[{"name": "gate", "polygon": [[0, 0], [NaN, 1], [0, 5]]}]', r"vertex 1 .* not two"),
    ],
)
def test_bad_json_files_are_refused_naming_the_file(tmp_path, text, message):
  path = tmp_path / "regions.json"
  path.write_text(text)
  with pytest.raises(ValueError, match=re.escape(str(path)) + ": .*" + message):
    load_regions(path)


def test_a_missing_file_is_refused_naming_it(tmp_path):
  path = tmp_path / "absent.json"
  with pytest.raises(ValueError, match=re.escape(str(path)) + ": cannot read the regions file"):
    load_regions(path)


def test_regions_reaching_outside_the_picture_are_refused():
  regions = parse_regions(
      {"border": rectangle(640, 480), "gate": [[600, 100], [641, 300], [600, 420], [-2, 0]]},
      "regions argument",
  )
  check_regions(regions[:1], 640, 480, "photo.jpg")  # vertices on the border are inside
  with pytest.raises(
      ValueError,
      match=(
          r"photo.jpg: region 'gate' reaches outside the picture \(640 x 480 pixels\): "
          r"vertex 1 is at \(641, 300\) \(2 of its 4 vertices are outside\)"
      ),
  ):
    check_regions(regions, 640, 480, "photo.jpg")
  with pytest.raises(ValueError, match=r"region 'border' .* vertex 1 is at \(640, 0\)"):
    check_regions(regions[:1], 639, 480, "photo.jpg")
