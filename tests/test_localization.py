"""Head points from density maps, and the one-to-one matching behind P/R/F1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io
from PIL import Image
from scipy.optimize import linear_sum_assignment

from cfrnet_jax import localization
from cfrnet_jax.data.targets import density_targets
from configs import base
from tests.conftest import shared_data, sht_sample_annotations

# The config's point options (configs/base.py) but the method, which each test chooses.
OPTIONS = {k: v for k, v in localization.point_options(base.get_config()).items() if k != "method"}

_density_targets = jax.jit(
    density_targets, static_argnames=("image_size", "strides", "sigma", "foreground_radius")
)


def locate(density: np.ndarray, method: str) -> np.ndarray:
  """Head points of a stride-4 map with the config's options and `method`."""
  return localization.locate_heads(density, 4, method=method, **OPTIONS)


def exact_density(points: np.ndarray, height: int, width: int, stride=4, sigma=4.0) -> np.ndarray:
  """The training target of `points` at `stride`: what a perfect model would output."""
  targets = _density_targets(
      jnp.asarray(points, jnp.float32),
      jnp.ones(len(points), bool),
      (height, width),
      strides=(stride,),
      sigma=sigma,
      foreground_radius=8.0,
  )
  return np.asarray(targets["density"][stride])


@pytest.mark.parametrize("image", [1, 2, 3, 4, 5])  # 11 to 256 heads: real photos
@pytest.mark.parametrize("method", localization.POINT_METHODS)
def test_points_of_an_exact_density_recover_the_annotations(image, method):
  path, truth = sht_sample_annotations(image)
  with Image.open(path) as picture:
    width, height = picture.size
  density = exact_density(truth, height, width)
  points = locate(density, method=method)
  if method == "count":
    assert len(points) == round(float(density.sum())) == len(truth)
  row = localization.localization_row(points, truth)
  metrics = localization.localization_metrics([row])
  assert metrics["f1_8"] > 0.9, (row, metrics)
  assert metrics["f1_4"] <= metrics["f1_8"]


@pytest.mark.parametrize("image, merged", [(4, False), (5, True)])  # 96 and 469 heads
def test_count_method_on_real_dense_crowds(image, merged):
  """In UCF_CC_50 image 5 heads are a few pixels apart: maxima merge, so "peaks" finds
  fewer points than people, while "count" places one per person, mostly within 8 px."""
  folder = shared_data("ucf_cc_50")
  truth = scipy.io.loadmat(folder / f"{image}_ann.mat")["annPoints"].astype(np.float64)
  with Image.open(folder / f"{image}.jpg") as picture:
    width, height = picture.size
  density = exact_density(truth, height, width)
  counted = locate(density, method="count")
  peaks = locate(density, method="peaks")
  assert len(counted) == len(truth)
  assert (len(peaks) < len(truth)) == merged
  metrics = localization.localization_metrics([localization.localization_row(counted, truth)])
  assert metrics["f1_8"] > 0.8, metrics


def test_a_head_on_a_cell_corner_gives_one_point_at_the_head():
  """Its mass splits equally over four cells: one maximum plateau, one point, and the
  sub-cell centroid puts it back near the corner."""
  density = exact_density(np.array([[32.0, 40.0]]), 96, 96)
  points = locate(density, method="peaks")
  assert points.shape == (1, 2)
  np.testing.assert_allclose(points[0], [32.0, 40.0], atol=0.1)


def test_count_method_places_the_rounded_count_even_in_a_merged_blob():
  """Twelve heads 3 px apart merge into one maximum: "peaks" sees few, "count" places 12
  within the blob."""
  truth = np.array([[40.0 + 3 * i, 50.0 + 3 * (i % 3)] for i in range(12)])
  density = exact_density(truth, 128, 128)
  peaks = locate(density, method="peaks")
  counted = locate(density, method="count")
  assert len(peaks) < 12 and len(counted) == 12
  assert np.all((counted >= truth.min(0) - 8) & (counted <= truth.max(0) + 8))
  # Refined on what is left unexplained, the points spread over the blob, none stacked.
  assert len(np.unique(np.round(counted, 3), axis=0)) == 12


def test_count_method_on_thousands_of_heads():
  """2,000 heads scattered over a 1024x768 picture (NWPU-like density in places): exactly
  2,000 points, most within 8 px of a head."""
  rng = np.random.default_rng(0)
  truth = rng.uniform([0, 0], [1024, 768], (2000, 2))
  density = exact_density(truth, 768, 1024)
  points = locate(density, method="count")
  assert len(points) == 2000
  metrics = localization.localization_metrics([localization.localization_row(points, truth)])
  assert metrics["f1_8"] > 0.8, metrics


def test_negative_and_weak_density_marks_no_one():
  density = np.full((20, 30), -0.01)
  density[5, 5] = 0.04  # below the default threshold of 0.05 people per cell
  assert len(locate(density, method="peaks")) == 0
  assert len(locate(density, method="count")) == 0  # round(-5.95) < 0


def test_unknown_method_is_refused():
  with pytest.raises(ValueError, match="point_method must be one of"):
    locate(np.zeros((4, 4)), method="nms")


@pytest.mark.parametrize("seed", range(5))
def test_matching_finds_as_many_pairs_as_the_hungarian_assignment(seed):
  """Hopcroft-Karp on pairs within the distance = linear_sum_assignment with cost 0
  within it and 1 beyond (the protocol's definition), on clustered random points."""
  rng = np.random.default_rng(seed)
  predicted = rng.uniform(0, 60, (rng.integers(20, 60), 2))
  true = rng.uniform(0, 60, (rng.integers(20, 60), 2))
  distances = np.linalg.norm(predicted[:, None] - true[None], axis=-1)
  for threshold in (4, 8):
    rows, cols = linear_sum_assignment((distances > threshold).astype(float))
    expected = int(np.sum(distances[rows, cols] <= threshold))
    assert localization.matched_pairs(predicted, true, threshold) == expected


def test_metrics_are_micro_averaged_over_images():
  rows = [
      {"predicted_points": 10, "true_points": 5, "matched_4": 2, "matched_8": 5},
      {"predicted_points": 0, "true_points": 5, "matched_4": 0, "matched_8": 0},
  ]
  metrics = localization.localization_metrics(rows)
  assert metrics["precision_8"] == pytest.approx(0.5)
  assert metrics["recall_8"] == pytest.approx(0.5)
  assert metrics["f1_8"] == pytest.approx(0.5)
  assert metrics["precision_4"] == pytest.approx(0.2)
  assert metrics["recall_4"] == pytest.approx(0.2)
  assert localization.matched_pairs(np.zeros((0, 2)), np.ones((3, 2)), 8) == 0
