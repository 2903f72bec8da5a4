"""People counted inside named regions of interest (a platform, a gate, an exit).

Users draw each region as a polygon in the pixels of their own picture and want the
number of people inside it, not in the whole picture. The model's density map gives
people per 4x4-pixel cell of the image it saw (the "model image", possibly a resized
copy of the picture), so a region's count is the density integrated over the polygon:

    count = sum_ij density[i, j] * area(cell_ij ∩ image ∩ polygon) / area(cell_ij ∩ image)

* Cells cut by the polygon's edge are weighted by the fraction they have inside it, not
  taken whole or dropped: all-or-nothing cells would add or drop part of every border
  cell's people, a large error for a narrow region (a doorway a few cells wide).
* The fraction is of the cell's area *inside the image*: the last row and column of
  cells are cut by the image border when its size is not a multiple of 4, and dividing
  by 16 there would leave a polygon covering the whole picture short of the total.
* Polygons are given in picture pixels and scaled by the resize factors (sx, sy) =
  (W / W0, H / H0) to the model image, so regions drawn once stay valid whatever size
  the model runs at.

Coverage uses shapely 2's vectorised operations on the cells in the polygon's bounding
box only: cells wholly inside (a prepared `contains_properly`) count 1, cells not
touching it count 0, and only those cut by its edge are intersected exactly, which keeps
a 1024 x 768 picture (256 x 192 cells) to a fraction of a second.

Regions come as JSON (`load_regions`):

    {"regions": [{"name": "gate", "polygon": [[x, y], [x, y], [x, y], ...]}, ...]}

(or a bare list of such objects), or as a Python object (`parse_regions`): that list, or
a dict {name: polygon}. Vertices may go clockwise or counter-clockwise, and the first
may be repeated at the end. Malformed regions raise ValueError naming where they came
from, the region (by name, or by index when it has none) and what is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import reprlib
from pathlib import Path

import numpy as np
import shapely

from cfrnet_jax.data.geometry import ceil_div
from cfrnet_jax.models.cfrnet import DENSITY_STRIDE


@dataclasses.dataclass(frozen=True, eq=False)
class Region:
  """A named polygon in picture pixels.

  `polygon` is (K, 2) float64 (x, y), K >= 3, without a repeated closing vertex,
  read-only. Regions compare by identity (eq=False): arrays have no single truth value
  to compare fields with.
  """

  name: str
  polygon: np.ndarray


def _region_label(name, index: int) -> str:
  """How messages name a region: by its name when it has a usable one, else by index."""
  if isinstance(name, str) and name.strip():
    return f"region {name!r}"
  return f"region at index {index}"


def _is_coordinate(value) -> bool:
  """A finite real number (bools are not coordinates, though Python counts them as ints)."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _parse_polygon(polygon, where: str) -> np.ndarray:
  """(K, 2) float64 vertices of a simple polygon with positive area; ValueError otherwise.

  `where` ("<source>: region 'gate'") starts every message.
  """
  if not isinstance(polygon, (list, tuple, np.ndarray)):
    raise ValueError(
        f"{where}: the polygon must be a list of [x, y] vertices, got {type(polygon).__name__}."
    )
  for index, vertex in enumerate(polygon):
    if not (
        isinstance(vertex, (list, tuple, np.ndarray))
        and len(vertex) == 2
        and all(_is_coordinate(value) for value in vertex)
    ):
      raise ValueError(
          f"{where}: vertex {index} {reprlib.repr(vertex)} is not two finite numbers [x, y]."
      )
  vertices = np.array(polygon, np.float64).reshape(-1, 2)
  if len(vertices) > 1 and np.array_equal(vertices[0], vertices[-1]):
    vertices = vertices[:-1]  # the closing vertex, repeated as GeoJSON and shapely write it
  if len(vertices) < 3:
    raise ValueError(
        f"{where}: the polygon has {len(vertices)} distinct vertices; at least 3 are needed."
    )
  shape = shapely.Polygon(vertices)
  if shapely.area(shapely.convex_hull(shape)) == 0:
    raise ValueError(f"{where}: the polygon has zero area (its vertices lie on one line).")
  if not shapely.is_valid(shape):
    raise ValueError(
        f"{where}: the polygon is self-intersecting (shapely: {shapely.is_valid_reason(shape)}); "
        "its edges may only meet at consecutive vertices."
    )
  vertices.flags.writeable = False
  return vertices


def parse_regions(spec, source: str) -> list[Region]:
  """Regions from a Python object, checked; `source` names it in error messages.

  Args:
    spec: a list of {"name": str, "polygon": [[x, y], ...]} dicts (the JSON file's
      format), or a dict {name: [[x, y], ...]}.
    source: where `spec` came from, for messages: a file path, or "regions argument".

  Returns:
    The regions in the given order.

  Raises:
    ValueError: naming `source`, the region and the problem, when `spec` is not one of
      the forms above, a name is missing, empty, not a string or used twice, or a
      polygon has fewer than 3 vertices, a vertex that is not two finite numbers, crossing
      edges or zero area.
  """
  if isinstance(spec, dict):
    entries = list(spec.items())
  elif isinstance(spec, (list, tuple)):
    entries = []
    for index, item in enumerate(spec):
      if not isinstance(item, dict):
        raise ValueError(
            f'{source}: region at index {index} must be an object with "name" and "polygon", '
            f"got {type(item).__name__}."
        )
      if "name" not in item:
        raise ValueError(f'{source}: region at index {index} has no "name".')
      if "polygon" not in item:
        raise ValueError(f'{source}: {_region_label(item["name"], index)} has no "polygon".')
      entries.append((item["name"], item["polygon"]))
  else:
    raise ValueError(
        f'{source}: expected a list of regions [{{"name": ..., "polygon": [[x, y], ...]}}, ...] '
        f"or a mapping from names to polygons, got {type(spec).__name__}."
    )
  if not entries:
    raise ValueError(f"{source}: no regions given.")
  regions, first_index = [], {}
  for index, (name, polygon) in enumerate(entries):
    if not isinstance(name, str):
      raise ValueError(
          f"{source}: region at index {index} has a name of type {type(name).__name__}; "
          "names must be strings."
      )
    if not name.strip():
      raise ValueError(f"{source}: region at index {index} has an empty name.")
    if name in first_index:
      raise ValueError(
          f"{source}: region name {name!r} is used twice "
          f"(regions at index {first_index[name]} and {index})."
      )
    first_index[name] = index
    vertices = _parse_polygon(polygon, f"{source}: {_region_label(name, index)}")
    regions.append(Region(name, vertices))
  return regions


def load_regions(path: str | Path) -> list[Region]:
  """Regions from a JSON file: {"regions": [{"name": ..., "polygon": [[x, y], ...]}, ...]}
  or a bare list of such objects.

  Raises:
    ValueError: naming the file, when it cannot be read, is not JSON, or holds regions
      that `parse_regions` refuses.
  """
  path = Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as error:
    raise ValueError(f"{path}: cannot read the regions file ({error}).") from error
  try:
    spec = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error}).") from error
  if isinstance(spec, dict):
    if "regions" not in spec:
      raise ValueError(
          f'{path}: expected {{"regions": [...]}} or a list of regions; '
          'the JSON object has no "regions" key.'
      )
    spec = spec["regions"]
  return parse_regions(spec, str(path))


def check_regions(regions: list[Region], width: int, height: int, picture: str) -> None:
  """Refuses regions that reach outside the picture they are meant for.

  Regions are drawn in the picture's own pixels, so a vertex outside [0, width] x
  [0, height] means the region was drawn on another picture or at another size, and its
  count would silently cover the wrong place.

  Raises:
    ValueError: naming `picture`, its size, the region and its first vertex outside.
  """
  for region in regions:
    x, y = region.polygon[:, 0], region.polygon[:, 1]
    outside = (x < 0) | (x > width) | (y < 0) | (y > height)
    if outside.any():
      index = int(np.argmax(outside))
      raise ValueError(
          f"{picture}: region {region.name!r} reaches outside the picture ({width} x {height} "
          f"pixels): vertex {index} is at ({x[index]:g}, {y[index]:g}) ({int(outside.sum())} "
          f"of its {len(outside)} vertices are outside); regions must be drawn in this "
          "picture's pixels."
      )


def cell_coverage(
    polygon: np.ndarray,
    map_shape: tuple[int, int],
    image_size: tuple[int, int],
    stride: int = DENSITY_STRIDE,
) -> np.ndarray:
  """The fraction of each density cell's in-image area that lies inside `polygon`.

  Args:
    polygon: (K, 2) (x, y) vertices of a valid polygon (as `parse_regions` makes) in
      model-image pixels; parts outside the image are ignored.
    map_shape: (h, w) of the density map, (ceil(H / stride), ceil(W / stride)).
    image_size: (H, W) of the model image.
    stride: pixels per cell side; cell (i, j) covers x in [stride j, stride (j + 1)) and
      y in [stride i, stride (i + 1)), clipped to the image.

  Returns:
    (h, w) float64 in [0, 1].

  Raises:
    ValueError: when `map_shape` is not the map of `image_size` (swapped sizes, say).
  """
  height, width = image_size
  rows, cols = map_shape
  if (rows, cols) != (ceil_div(height, stride), ceil_div(width, stride)):
    raise ValueError(
        f"A density map of shape {tuple(map_shape)} does not belong to a {height} x {width} "
        f"(H x W) image at stride {stride}: expected "
        f"{(ceil_div(height, stride), ceil_div(width, stride))}."
    )
  coverage = np.zeros((rows, cols), np.float64)
  shape = shapely.Polygon(polygon)
  min_x, min_y, max_x, max_y = shapely.bounds(shape)
  col_start, col_stop = max(0, math.floor(min_x / stride)), min(cols, math.ceil(max_x / stride))
  row_start, row_stop = max(0, math.floor(min_y / stride)), min(rows, math.ceil(max_y / stride))
  if col_start >= col_stop or row_start >= row_stop:
    return coverage  # the polygon lies wholly outside the image
  left, top = np.meshgrid(
      np.arange(col_start, col_stop) * stride, np.arange(row_start, row_stop) * stride
  )
  right, bottom = np.minimum(left + stride, width), np.minimum(top + stride, height)
  cells = shapely.box(left, top, right, bottom)
  # Exact intersections are slow (about 20 us a cell); prepared predicates sort out the
  # cells wholly inside or outside, leaving only the cells on the polygon's edge.
  shapely.prepare(shape)
  inside = shapely.contains_properly(shape, cells)
  cut = shapely.intersects(shape, cells) & ~inside
  window = inside.astype(np.float64)
  cell_area = (right - left) * (bottom - top)
  window[cut] = shapely.area(shapely.intersection(cells[cut], shape)) / cell_area[cut]
  # Rounding in the intersection may exceed the cell's area by an ulp.
  coverage[row_start:row_stop, col_start:col_stop] = np.minimum(window, 1.0)
  return coverage


def region_counts(
    density: np.ndarray,
    regions: list[Region],
    scale: tuple[float, float],
    image_size: tuple[int, int],
) -> dict[str, float]:
  """People in each region: the density integrated over its polygon.

  Args:
    density: (h, w) people per cell of the model image, (ceil(H / 4), ceil(W / 4)).
    regions: regions in picture pixels (`parse_regions`, `load_regions`).
    scale: (sx, sy) = (W / W0, H / H0), model-image pixels per picture pixel.
    image_size: (H, W) of the model image.

  Returns:
    {name: count} in the order of `regions`, summed in float64. A polygon covering the
    whole picture gives the density's total.
  """
  density = np.asarray(density, np.float64)
  if density.ndim != 2:
    raise ValueError(f"The density map must be (h, w), got shape {density.shape}.")
  scale = (float(scale[0]), float(scale[1]))
  return {
      region.name: float(
          np.sum(density * _scaled_coverage(region, scale, density.shape, tuple(image_size)))
      )
      for region in regions
  }


@functools.lru_cache(maxsize=64)
def _scaled_coverage(
    region: Region, scale: tuple[float, float], map_shape: tuple[int, int], image_size: tuple
) -> np.ndarray:
  """`cell_coverage` of `region` scaled to the model image, computed once per region and
  size: the frames of a video share it (regions hash by identity)."""
  coverage = cell_coverage(region.polygon * np.asarray(scale), map_shape, image_size)
  coverage.setflags(write=False)
  return coverage
