"""Head locations from a density map, and how well they match annotated heads.

CFRNet predicts a density map (people per 4x4-pixel cell), not points; the paper reports
counts only. Users also want to know where the people are, so this module reads points
out of any density map, and measures that reading against annotations.

Two ways to place points (`config.predict.point_method`):

* "peaks" (the config's default): local maxima of the map. A cell is a head when its
  density is at least `threshold` people and it is the largest cell within
  `min_distance` pixels (Chebyshev distance in cells, rounded to whole cells, at least
  one). Candidates are accepted from the densest down, each suppressing its
  neighbourhood, so a maximum that spans two equal cells (a head on a cell border) gives
  one point, not two. The number of points can differ from the count: touching heads in
  a dense crowd merge into one maximum, and low background density (below `threshold`)
  gives none.
* "count": exactly round(count) points, so the points agree with the count shown. Greedy
  pursuit: repeatedly put a point on the cell with the most density not yet explained
  and subtract one person's worth of density there - the unit-mass Gaussian of the
  training targets (`config.targets.sigma`, summed over cells as `data.targets` renders
  it) - until the rounded count is placed. Dense blobs thus receive as many points as
  they hold people, spread over the blob.

Either way a point is refined below the cell size (cell centres are at (4j + 2, 4i + 2)
pixels) by fitting a Gaussian through its 3x3 neighbourhood, axis by axis ("count" fits
it to the density not yet explained when the point is placed).

Localization metrics (P2PNet's protocol, Song et al. 2021): predicted and annotated
points are matched one to one; a pair counts when the two are at most `t` pixels apart,
for t in `LOCALIZATION_THRESHOLDS` = 4 and 8 pixels of the original picture. The matching
maximises the number of such pairs: the Hungarian assignment with cost 0 within `t` and
1 beyond, solved as a maximum bipartite matching (Hopcroft-Karp on the sparse graph of
pairs within `t`), which is exact and fast for the thousands of heads of a dense image.
Precision, recall and F1 are micro-averaged over a split: matched pairs summed over the
images, divided by the predicted (precision) or annotated (recall) points summed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree
from scipy.special import ndtr

POINT_METHODS = ("peaks", "count")
LOCALIZATION_THRESHOLDS = (4, 8)  # pixels of the original picture (P2PNet's protocol).
_BLOCK = 16  # cells per side of the blocks whose maxima "count" keeps
# The tallies of one image (`localization_row`).
ROW_FIELDS = ("predicted_points", "true_points") + tuple(
    f"matched_{t}" for t in LOCALIZATION_THRESHOLDS
)


def point_options(config) -> dict:
  """`locate_heads`'s keyword arguments from a run's config (`config.predict`)."""
  check_point_method(config.predict.point_method)
  return {
      "method": config.predict.point_method,
      "threshold": config.predict.point_threshold,
      "min_distance": config.predict.point_min_distance,
      "sigma": config.targets.sigma,
  }


def check_point_method(method: str) -> None:
  if method not in POINT_METHODS:
    raise ValueError(f"predict.point_method must be one of {POINT_METHODS}, got {method!r}.")


def locate_heads(
    density: np.ndarray,
    stride: int,
    *,
    method: str,
    threshold: float,
    min_distance: float,
    sigma: float,
) -> np.ndarray:
  """(N, 2) float64 (x, y) pixel positions of heads in the image `density` was computed
  on: (h, w) people per `stride` x `stride` cell. `method`, `threshold` (people per
  cell) and `min_distance` (pixels) as the module docstring says; `sigma` (pixels) is the
  training targets' Gaussian, used by "count". The values come from the config:
  `**point_options(config)`, whose defaults are in configs/base.py."""
  check_point_method(method)
  density = np.asarray(density, np.float64)
  if density.ndim != 2:
    raise ValueError(f"Expected an (h, w) density map, got shape {density.shape}.")
  count = max(0, round(float(density.sum())))  # the count shown, negative cells included
  # The linear density head can dip below zero; negative density marks no one.
  density = np.maximum(density, 0.0)
  if method == "count":
    return _pursuit(density, count, _unit_kernel(sigma, stride), stride)
  return _refine(density, _peaks(density, threshold, max(1, round(min_distance / stride))), stride)


def _peaks(density: np.ndarray, threshold: float, radius: int) -> np.ndarray:
  """(N, 2) int (row, col) of local maxima at least `threshold`, no two within `radius`
  cells, accepted from the densest down."""
  window = 2 * radius + 1
  candidates = np.argwhere(
      (density >= threshold)
      & (density > 0)  # no heads on flat empty ground, whatever the threshold
      & (density == ndimage.maximum_filter(density, window))
  )
  order = np.argsort(-density[candidates[:, 0], candidates[:, 1]], kind="stable")
  taken = np.zeros(density.shape, bool)
  kept = []
  for row, col in candidates[order]:
    if taken[row, col]:
      continue
    kept.append((row, col))
    taken[max(0, row - radius) : row + radius + 1, max(0, col - radius) : col + radius + 1] = True
  return np.array(kept, np.int64).reshape(-1, 2)


def _unit_kernel(sigma: float, stride: int) -> np.ndarray:
  """One person's density at cell resolution: a unit-mass Gaussian of `sigma` pixels
  centred on a cell centre, summed over `stride`-pixel cells, out to 3 sigma."""
  radius = max(1, math.ceil(3 * sigma / stride))
  edges = (np.arange(-radius, radius + 2) - 0.5) * stride / sigma
  along = np.diff(ndtr(edges))
  along /= along.sum()
  return np.outer(along, along)


def _pursuit(density: np.ndarray, points: int, kernel: np.ndarray, stride: int) -> np.ndarray:
  """(points, 2) (x, y) pixels by greedy pursuit: each point goes to the cell with the
  most density not yet explained, refined (`_vertex`) on that residual, which then loses
  one `kernel`. Refining on the residual spreads the points of a dense blob instead of
  stacking them on one spot. The largest cell is found through per-block maxima (blocks
  of `_BLOCK` x `_BLOCK` cells, updated where a kernel was taken), so images with tens of
  thousands of heads stay fast."""
  height, width = density.shape
  blocks_down, blocks_across = -(-height // _BLOCK), -(-width // _BLOCK)
  # The map with one cell of margin; margin and block padding hold -1 (never the largest,
  # weighted as 0 when refining).
  grid = np.full((blocks_down * _BLOCK + 2, blocks_across * _BLOCK + 2), -1.0)
  grid[1 : height + 1, 1 : width + 1] = density
  inner = grid[1:-1, 1:-1]  # a view: block (a, b) is inner[a*B:(a+1)*B, b*B:(b+1)*B]
  block_max = inner.reshape(blocks_down, _BLOCK, blocks_across, _BLOCK).max((1, 3))
  radius = kernel.shape[0] // 2
  kept = np.empty((points, 2), np.float64)
  for n in range(points):
    down, across = divmod(int(np.argmax(block_max)), blocks_across)
    block = inner[down * _BLOCK : (down + 1) * _BLOCK, across * _BLOCK : (across + 1) * _BLOCK]
    row, col = divmod(int(np.argmax(block)), _BLOCK)
    row, col = row + down * _BLOCK, col + across * _BLOCK
    patch = np.maximum(grid[row : row + 3, col : col + 3], 0.0)  # 3x3 around (row, col)
    kept[n] = (
        (col + 0.5 + _vertex(patch.sum(0)[None])[0]) * stride,
        (row + 0.5 + _vertex(patch.sum(1)[None])[0]) * stride,
    )
    top, left = max(0, row - radius), max(0, col - radius)
    bottom, right = min(height, row + radius + 1), min(width, col + radius + 1)
    window = inner[top:bottom, left:right]
    window -= kernel[
        top - row + radius : bottom - row + radius, left - col + radius : right - col + radius
    ]
    np.maximum(window, 0.0, out=window)
    first_down, first_across = top // _BLOCK, left // _BLOCK
    last_down, last_across = (bottom - 1) // _BLOCK + 1, (right - 1) // _BLOCK + 1
    block_max[first_down:last_down, first_across:last_across] = (
        inner[
            first_down * _BLOCK : last_down * _BLOCK, first_across * _BLOCK : last_across * _BLOCK
        ]
        .reshape(last_down - first_down, _BLOCK, last_across - first_across, _BLOCK)
        .max((1, 3))
    )
  return kept


def _refine(density: np.ndarray, cells: np.ndarray, stride: int) -> np.ndarray:
  """Cells -> (x, y) pixels, refined below the cell size along each axis from the 3x3
  neighbourhood's row and column sums (l, c, r): the vertex of the parabola through
  their logarithms, exact for a Gaussian and for a head on a cell border (l = c: half a
  cell). Where a sum is zero (no density beside the peak) the cell centre is kept."""
  if len(cells) == 0:
    return np.zeros((0, 2), np.float64)
  padded = np.pad(density, 1)  # the padding's zeros carry no weight
  offsets = np.array([-1, 0, 1])
  rows, cols = cells[:, 0], cells[:, 1]
  row_index = rows[:, None, None] + 1 + offsets[None, :, None]
  patches = padded[row_index, cols[:, None, None] + 1 + offsets]  # (N, 3, 3)
  return np.stack(
      [
          (cols + 0.5 + _vertex(patches.sum(1))) * stride,
          (rows + 0.5 + _vertex(patches.sum(2))) * stride,
      ],
      1,
  )


def _vertex(sums: np.ndarray) -> np.ndarray:
  """(N, 3) positive-peaked sums -> (N,) offsets in [-1/2, 1/2] of the log-parabola's top."""
  positive = np.all(sums > 0, axis=1)
  logs = np.log(np.where(positive[:, None], sums, 1.0))
  left, centre, right = logs[:, 0], logs[:, 1], logs[:, 2]
  curvature = left - 2 * centre + right
  usable = positive & (curvature < 0)
  offset = 0.5 * (left - right) / np.where(usable, curvature, -1.0)
  return np.where(usable, np.clip(offset, -0.5, 0.5), 0.0)


def matched_pairs(predicted: np.ndarray, true: np.ndarray, distance: float) -> int:
  """The largest number of one-to-one (predicted, true) pairs at most `distance` apart."""
  predicted = np.asarray(predicted, np.float64).reshape(-1, 2)
  true = np.asarray(true, np.float64).reshape(-1, 2)
  if len(predicted) == 0 or len(true) == 0:
    return 0
  neighbours = cKDTree(true).query_ball_point(predicted, r=distance)
  rows = np.repeat(np.arange(len(predicted)), [len(n) for n in neighbours])
  cols = np.fromiter((j for n in neighbours for j in n), np.int64, len(rows))
  graph = sparse.csr_matrix(
      (np.ones(len(rows), np.int8), (rows, cols)), shape=(len(predicted), len(true))
  )
  return int(np.sum(maximum_bipartite_matching(graph, perm_type="column") >= 0))


def localization_row(predicted: np.ndarray, true: np.ndarray) -> dict[str, int]:
  """One image's tallies (`ROW_FIELDS`): predicted and annotated points, and matched pairs
  within each of `LOCALIZATION_THRESHOLDS` pixels."""
  row = {"predicted_points": len(predicted), "true_points": len(true)}
  for threshold in LOCALIZATION_THRESHOLDS:
    row[f"matched_{threshold}"] = matched_pairs(predicted, true, threshold)
  return row


def localization_metrics(rows: Iterable[dict]) -> dict[str, float]:
  """Micro-averaged precision, recall and F1 per threshold over `localization_row`s."""
  rows = list(rows)
  predicted = sum(r["predicted_points"] for r in rows)
  true = sum(r["true_points"] for r in rows)
  metrics = {}
  for threshold in LOCALIZATION_THRESHOLDS:
    matched = sum(r[f"matched_{threshold}"] for r in rows)
    precision = matched / predicted if predicted else 0.0
    recall = matched / true if true else 0.0
    total = precision + recall
    metrics[f"precision_{threshold}"] = precision
    metrics[f"recall_{threshold}"] = recall
    metrics[f"f1_{threshold}"] = 2 * precision * recall / total if total else 0.0
  return metrics
