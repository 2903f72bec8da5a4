"""Input pipeline: crops, augmentation, targets, determinism, resumption, sharding."""

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from cfrnet_jax.data import pipeline
from cfrnet_jax.data.device_ops import normalize_images
from cfrnet_jax.data.geometry import decode_image, mean_colour
from cfrnet_jax.data.targets import density_targets
from configs.base import get_config

REPO = Path(__file__).resolve().parents[1]
TARGET_ARGS = get_config().targets.to_dict()  # sigma, foreground_radius


def encode(pixels: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")  # lossless, so pixels can be checked
  return out.getvalue()


def marked_example(height, width, points, name="img.png"):
  """An image that is black except for a white pixel at each head, so that where the
  pipeline moves the points can be checked against where it moves the pixels."""
  pixels = np.zeros((height, width, 3), np.uint8)
  points = np.asarray(points, np.float32).reshape(-1, 2)
  for x, y in points:
    pixels[int(y), int(x)] = 255
  return {
      "image": encode(pixels),
      "points": points,
      "count": len(points),
      "filename": name.encode(),
  }


def small_config(**data_overrides):
  config = get_config()
  config.batch_size = 4
  config.data.num_workers = 0
  config.data.max_points = 64
  config.data.update(data_overrides)
  return config


def dataset(n=12):
  rng = np.random.default_rng(0)
  examples = []
  for i in range(n):
    height, width = rng.integers(200, 400, 2)
    points = rng.uniform(0, 1, (int(rng.integers(0, 40)), 2)) * [width - 1, height - 1]
    examples.append(marked_example(int(height), int(width), np.floor(points) + 0.5, f"{i}.png"))
  return examples


def crop(example, seed=0, **overrides):
  transform = pipeline.TrainCrop(small_config(**overrides).data)
  return transform.random_map(example, np.random.default_rng(seed))


def test_crop_points_sit_on_their_pixels_and_targets_sum_to_the_count():
  example = marked_example(
      300, 400, np.floor(np.random.default_rng(1).uniform(0, 1, (40, 2)) * [399, 299]) + 0.5
  )
  for seed in range(6):
    out = crop(example, seed, grayscale_prob=0.0)
    count = int(out["count"])
    points = out["points"][out["valid"]]
    assert len(points) == count and (~out["valid"][count:]).all()
    # Every white pixel of the crop is a head inside it, and vice versa.
    white = np.argwhere(out["image"][..., 0] == 255)
    assert sorted(map(tuple, white)) == sorted((int(y), int(x)) for x, y in np.floor(points))
    targets = density_targets(
        jnp.asarray(out["points"]),
        jnp.asarray(out["valid"]),
        (256, 256),
        strides=(1, 4, 8, 16),
        valid_size=jnp.asarray(out["valid_size"]),
        **TARGET_ARGS,
    )
    for stride, density in targets["density"].items():
      assert abs(float(density.sum()) - count) < 1e-4, stride


def test_flip_moves_points_and_density_consistently():
  example = marked_example(256, 256, [[10.5, 20.5], [200.5, 100.5], [255.0, 3.0]])
  plain = crop(example, 3, flip_prob=0.0, grayscale_prob=0.0)
  flipped = crop(example, 3, flip_prob=1.0, grayscale_prob=0.0)
  np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
  np.testing.assert_allclose(flipped["points"][:3, 0], 256 - plain["points"][:3, 0])
  np.testing.assert_allclose(flipped["points"][:3, 1], plain["points"][:3, 1])

  def density(out, stride):
    return np.asarray(
        density_targets(
            jnp.asarray(out["points"]),
            jnp.asarray(out["valid"]),
            (256, 256),
            strides=(stride,),
            valid_size=jnp.asarray(out["valid_size"]),
            **TARGET_ARGS,
        )["density"][stride]
    )

  for stride in (4, 8, 16):
    np.testing.assert_allclose(density(flipped, stride), density(plain, stride)[:, ::-1], atol=1e-6)


def test_grayscale_makes_channels_equal():
  example = {
      **marked_example(64, 64, []),
      "image": encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)),
  }
  out = crop(example, grayscale_prob=1.0)
  image = out["image"][:64, :64].astype(int)
  assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
  assert crop(example, grayscale_prob=0.0)["image"][:64, :64].std(-1).max() > 0


def test_image_smaller_than_the_crop_is_padded_without_density():
  example = marked_example(80, 100, [[99.5, 79.5], [0.5, 0.5], [50.5, 40.5]])
  out = crop(example, flip_prob=0.0)
  assert out["image"].shape == (256, 256, 3)
  np.testing.assert_array_equal(out["valid_size"], [80, 100])
  assert int(out["count"]) == 3
  fill = mean_colour(small_config().data.mean)
  assert (out["image"][80:] == fill).all() and (out["image"][:, 100:] == fill).all()
  targets = density_targets(
      jnp.asarray(out["points"]),
      jnp.asarray(out["valid"]),
      (256, 256),
      strides=(4,),
      valid_size=jnp.asarray(out["valid_size"]),
      **TARGET_ARGS,
  )
  density = np.asarray(targets["density"][4])
  assert abs(density.sum() - 3) < 1e-4
  assert density[20:].max() == 0 and density[:, 25:].max() == 0
  images = normalize_images(
      jnp.asarray(out["image"])[None],
      jnp.asarray(out["valid_size"])[None],
      small_config().data.mean,
      small_config().data.std,
  )
  assert float(jnp.abs(images[0, 80:]).max()) == 0.0


def test_image_without_heads():
  out = crop(marked_example(300, 300, []))
  assert int(out["count"]) == 0 and not out["valid"].any()


def test_too_many_heads_for_max_points_is_a_clear_error():
  example = marked_example(64, 64, [[i + 0.5, 10.5] for i in range(60)], "dense.png")
  with pytest.raises(ValueError, match=r"dense\.png: 60 heads.*max_points = 8"):
    crop(example, max_points=8)


def test_points_per_crop_come_from_the_densest_image_of_the_split():
  examples = dataset()
  assert pipeline.max_points_per_crop(small_config(max_points=0).data, examples) == 256
  assert pipeline.max_points_per_crop(small_config(max_points=50).data, examples) == 50
  examples.append(marked_example(64, 64, [[i % 64 + 0.5, i // 64 + 0.5] for i in range(300)]))
  assert pipeline.max_points_per_crop(small_config(max_points=0).data, examples) == 512


def test_a_crop_of_20000_heads_passes_through_and_its_targets_keep_the_count():
  """NWPU-Crowd has an image of 20,033 heads: a crop holding 20,000 goes through the
  loader with the points per crop taken from the data, and its targets sum to 20,000."""
  rng = np.random.default_rng(5)
  heads = np.floor(rng.uniform(0, 256, (20_000, 2))) + 0.5
  config = small_config(max_points=0, crop_size=256, flip_prob=0.0)
  loader = pipeline.create_train_loader(config, [marked_example(256, 256, heads, "nwpu.jpg")])
  batch = next(iter(loader))
  assert batch["points"].shape == (4, 20_224, 2)
  assert batch["count"].tolist() == [20_000] * 4
  targets = density_targets(
      jnp.asarray(batch["points"][0]),
      jnp.asarray(batch["valid"][0]),
      (256, 256),
      strides=(4, 8, 16),
      **TARGET_ARGS,
  )
  for stride in (4, 8, 16):
    assert float(targets["density"][stride].sum()) == pytest.approx(20_000, rel=1e-4)


def test_max_side_resizes_images_and_points_together():
  example = marked_example(1000, 2000, [[1999.0, 999.0], [1000.0, 500.0]])
  image, scale = decode_image(example["image"], 1024, "x")
  assert image.shape == (512, 1024, 3)
  np.testing.assert_allclose(example["points"] * scale, [[1023.488, 511.488], [512, 256]])
  out = crop(example, max_side=1024, crop_size=256)
  assert out["valid_size"].tolist() == [256, 256]


def _batches(config, n, source=None):
  loader = pipeline.create_train_loader(config, source or dataset())
  iterator = iter(loader)
  return [next(iterator) for _ in range(n)]


def test_same_seed_same_batches_and_other_seed_differs():
  first, second = _batches(small_config(), 4), _batches(small_config(), 4)
  for a, b in zip(first, second):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other_config = small_config()
  other_config.seed = 1
  other = _batches(other_config, 4)
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(first, other))
  assert first[0]["image"].shape == (4, 256, 256, 3)


def test_worker_processes_are_deterministic_and_augment_each_record_the_same_way():
  """With workers, grain batches each worker's records separately, so batches are formed
  differently from inline loading; but every record's crop depends only on the seed and
  its position, and a fixed worker count always gives the same batches."""
  config = small_config(num_workers=2)
  first, second = _batches(config, 4), _batches(config, 4)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["points"], b["points"])
  inline = _batches(small_config(), 4)
  crops = lambda batches: sorted(crop.tobytes() for b in batches for crop in b["image"])
  assert crops(first) == crops(inline)


RESUME_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # this script is the application
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    from test_pipeline import dataset, small_config
    from cfrnet_jax.data import pipeline
    iterator = iter(pipeline.create_train_loader(
        small_config(num_workers={workers}), dataset()))
    iterator.set_state(open({state!r}, "rb").read())
    batches = [next(iterator) for _ in range(3)]
    np.savez({out!r}, **{{f"{{i}}_{{k}}": v for i, b in enumerate(batches)
                          for k, v in b.items()}})
""")


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_iterator_in_a_new_process_continues_exactly(tmp_path, workers):
  iterator = iter(pipeline.create_train_loader(small_config(num_workers=workers), dataset()))
  for _ in range(5):  # past the first epoch of 12 images / 4 per batch
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(3)]
  (tmp_path / "state").write_bytes(state if isinstance(state, bytes) else state.encode())
  script = RESUME_SCRIPT.format(
      workers=workers,
      repo=str(REPO),
      tests=str(REPO / "tests"),
      state=str(tmp_path / "state"),
      out=str(tmp_path / "out.npz"),
  )
  subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
  restored = np.load(tmp_path / "out.npz")
  for i, batch in enumerate(expected):
    for key, value in batch.items():
      np.testing.assert_array_equal(restored[f"{i}_{key}"], value)


def test_eval_loader_pads_as_the_model_and_carries_the_true_count():
  config = small_config()
  examples = dataset(3)
  batches = list(pipeline.create_eval_loader(config, examples))
  assert len(batches) == 3
  for batch, example in zip(batches, examples):
    height, width = Image.open(io.BytesIO(example["image"])).size[::-1]
    assert batch["valid_size"][0].tolist() == [height, width]
    # The paper model's padding multiple is 128: the next multiple of it on each side.
    assert batch["image"].shape[1:3] == (-(-height // 128) * 128, -(-width // 128) * 128)
    assert int(batch["count"][0]) == example["count"]


NO_TF_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from cfrnet_jax.data import pipeline
    from configs.base import get_config
    config = get_config()
    config.data.data_dir = {data_dir!r}
    config.data.num_workers = 0
    source = pipeline.open_split(config.data, "train")
    batch = next(iter(pipeline.create_train_loader(config, source)))
    assert batch["image"].shape == (4, 256, 256, 3), batch["image"].shape
    print("tensorflow" in sys.modules)
""")


def test_training_reads_a_built_dataset_without_tensorflow(tmp_path):
  from tfds_crowd.build import build

  build("synthetic_crowd", str(tmp_path))
  out = subprocess.run(
      [sys.executable, "-c", NO_TF_SCRIPT.format(repo=str(REPO), data_dir=str(tmp_path))],
      check=True,
      capture_output=True,
      text=True,
      cwd=REPO,
  )
  assert out.stdout.strip().splitlines()[-1] == "False"


def test_missing_dataset_says_how_to_build_it(tmp_path):
  config = small_config()
  config.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="python -m tfds_crowd.build synthetic_crowd"):
    pipeline.open_split(config.data, "train")


def test_each_host_reads_only_its_shard():
  import grain.python as grain

  config = small_config()
  examples = dataset(10)
  names = []
  for index in range(2):
    options = grain.ShardOptions(shard_index=index, shard_count=2)
    names.append(
        [
            b["filename"][0]
            for b in pipeline.create_eval_loader(config, examples, shard_options=options)
        ]
    )
  assert len(names[0]) == len(names[1]) == 5
  assert not set(names[0]) & set(names[1])
  assert sorted(names[0] + names[1]) == sorted(f"{i}.png" for i in range(10))


def test_automatic_worker_count_is_the_usable_cores_but_one_capped(monkeypatch):
  data = lambda workers, cap=16: ml_collections.ConfigDict(
      {"num_workers": workers, "max_auto_workers": cap}
  )
  for cores, expected in ((1, 0), (2, 1), (8, 7), (96, 16)):
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
    assert pipeline.worker_count(data(-1)) == expected
  assert pipeline.worker_count(data(-1, cap=4)) == 4  # 96 cores
  assert pipeline.worker_count(data(0)) == 0 and pipeline.worker_count(data(3)) == 3
  with pytest.raises(ValueError, match="num_workers must be >= 0, or -1"):
    pipeline.worker_count(data(-2))
