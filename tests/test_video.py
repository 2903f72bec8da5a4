"""Counting videos: video_counting.count_video and predict mode's --video, end to end."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfrnet_jax.inference import video_io
from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.video_counting import DamagedVideoError, count_video, same_size_batches
from tests.conftest import shared_data, tiny_train_config

REPO = Path(__file__).resolve().parents[1]
FPS = 10


@pytest.fixture(scope="module")
def photo_video(tmp_path_factory) -> Path:
  """A real encoded video: the five sample photos at 320x240, each held for 3 frames."""
  folder = shared_data("sht_sample") / "images"
  photos = [
      np.asarray(Image.open(folder / f"IMG_{k}.jpg").convert("RGB").resize((320, 240)))
      for k in range(1, 6)
  ]
  path = tmp_path_factory.mktemp("video") / "crowds.mp4"
  assert video_io.write_video(path, [p for p in photos for _ in range(3)], FPS) == 15
  return path


@pytest.fixture(scope="module")
def counter():
  """A fresh tiny model running video frames 4 at a time."""
  config = tiny_train_config(None)
  config.predict.batch_size = 4
  return CrowdCounter.from_config(config)


def test_video_counts_equal_counting_the_same_frames_as_pictures(counter, photo_video):
  """Every 3rd frame (5 frames: a batch of 4, then one filled up with copies) through
  one compiled function: the counts of counting each decoded frame alone (batch 1), to
  float32 reassociation (1e-5)."""
  regions = {"left": [[0, 0], [160, 0], [160, 240], [0, 240]]}
  before = counter.compilations
  counts = count_video(counter, photo_video, every_frames=3, regions=regions)
  assert [c.frame for c in counts] == [0, 3, 6, 9, 12]
  assert [c.time for c in counts] == pytest.approx([i / FPS for i in range(0, 15, 3)])
  assert counter.compilations - before == 1  # one shape, one batch size
  alone = CrowdCounter(counter.config, counter._variables)
  frames = list(video_io.sample_frames(photo_video, every_frames=3))
  for count, frame in zip(counts, frames, strict=True):
    expected = alone.predict(frame.pixels, regions)
    assert count.count == pytest.approx(expected.count, rel=1e-5)
    assert count.regions["left"] == pytest.approx(expected.regions["left"], rel=1e-5)
  # Each frame shows another photo: the counts differ.
  assert len({round(c.count, 3) for c in counts}) == 5


def test_a_stream_that_changes_size_starts_a_new_batch(counter, monkeypatch):
  """Frames of two sizes, interleaved as a resized stream would deliver them: each is
  counted at its own size (as a picture would be), and regions are checked per size."""
  rng = np.random.default_rng(3)
  shapes = [(96, 128), (96, 128), (64, 80), (96, 128), (96, 128), (96, 128), (96, 128)]
  frames = [
      video_io.VideoFrame(i, i / FPS, rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
      for i, shape in enumerate(shapes)
  ]
  monkeypatch.setattr(video_io, "sample_frames", lambda *args: iter(frames))
  counts = count_video(counter, "stream.mp4")
  alone = CrowdCounter(counter.config, counter._variables)
  assert [c.frame for c in counts] == list(range(7))
  for count, frame in zip(counts, frames, strict=True):
    assert count.count == pytest.approx(alone.count(frame.pixels), rel=1e-5)
  with pytest.raises(ValueError, match="stream.mp4: region 'wide' reaches outside"):
    count_video(counter, "stream.mp4", regions={"wide": [[0, 0], [100, 0], [100, 90]]})


def test_a_damaged_video_keeps_the_counts_before_the_damage(counter, photo_video, tmp_path):
  damaged = tmp_path / "damaged.mp4"
  damaged.write_bytes(photo_video.read_bytes()[: photo_video.stat().st_size * 2 // 3])
  with pytest.raises(DamagedVideoError, match="truncated or damaged") as error:
    count_video(counter, damaged)
  whole = count_video(counter, photo_video)
  assert 0 < len(error.value.counts) < len(whole)
  assert error.value.counts == whole[: len(error.value.counts)]


def test_batches_are_consecutive_frames_of_one_size_and_damage_comes_after_them():
  """Batches of at most 3, cut where the size changes; a stream that breaks off gives
  the frames before the break, then its error."""
  shapes = [(4, 4, 3)] * 4 + [(2, 2, 3)] + [(4, 4, 3)] * 2

  def stream(damaged: bool):
    for i, shape in enumerate(shapes):
      yield video_io.VideoFrame(i, i / FPS, np.zeros(shape, np.uint8))
    if damaged:
      raise ValueError("cut")

  batches = [[f.index for f in batch] for batch in same_size_batches(stream(False), 3)]
  assert batches == [[0, 1, 2], [3], [4], [5, 6]]
  got = []
  with pytest.raises(ValueError, match="cut"):
    for batch in same_size_batches(stream(True), 3):
      got.append([f.index for f in batch])
  assert got == batches


def test_bad_sampling_flags_stop_before_any_work(tmp_path):
  result = subprocess.run(
      [sys.executable, "launch.py", "--mode", "predict", "--workdir", str(tmp_path / "none"),
       "--video", "clip.mp4", "--every_seconds", "0"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert result.returncode != 0
  assert "every_seconds must be a finite number > 0, got 0.0" in result.stderr


def test_predict_mode_counts_videos_and_reports_a_damaged_one(
    trained_workdir, photo_video, tmp_path
):
  damaged = tmp_path / "damaged.mp4"
  damaged.write_bytes(photo_video.read_bytes()[: photo_video.stat().st_size * 2 // 3])
  not_video = tmp_path / "notes.mp4"
  not_video.write_text("no frames here\n")
  regions = tmp_path / "regions.json"
  regions.write_text(
      json.dumps(
          {"regions": [{"name": "top", "polygon": [[0, 0], [320, 0], [320, 120], [0, 120]]}]}
      )
  )
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "launch.py", "--mode", "predict", "--workdir", str(trained_workdir),
       "--video", str(photo_video), "--video", str(damaged), "--video", str(not_video),
       "--every_seconds", "0.3", "--regions", str(regions), "--video_overlay", "--out", str(out)],
      cwd=REPO, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out / "video" / "crowds.csv", newline="") as table:
    rows = list(csv.DictReader(table))
  assert list(rows[0]) == ["frame", "time", "count", "points", "region:top"]
  assert [int(r["frame"]) for r in rows] == [0, 3, 6, 9, 12]  # 0.3 s at 10 fps
  assert all(float(r["region:top"]) != float(r["count"]) for r in rows)  # half the frame
  with Image.open(out / "video" / "crowds.png") as plot:
    assert plot.size[0] >= 600
  overlay = video_io.video_info(out / "video" / "crowds_overlay.mp4")
  assert overlay.frames == 5 and (overlay.width, overlay.height) == (320, 240)
  summary = json.loads((out / "video" / "summary.json").read_text())
  assert summary[str(photo_video)]["frames"] == 5 and summary[str(photo_video)]["error"] is None
  assert "truncated or damaged" in summary[str(damaged)]["error"]
  with open(out / "video" / "damaged.csv", newline="") as table:
    kept = list(csv.DictReader(table))
  assert 0 < len(kept) < 5  # the frames before the damage, counted as in the whole video
  for row, whole in zip(kept, rows):
    assert row["frame"] == whole["frame"] and row["count"] == whole["count"]
  assert video_io.video_info(out / "video" / "damaged_overlay.mp4").frames == len(kept)
  assert summary[str(not_video)]["frames"] == 0
  assert str(not_video) in summary[str(not_video)]["error"]
  assert not (out / "video" / "notes.png").exists()
