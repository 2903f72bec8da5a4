"""Predict mode that resumes, batches and spreads over processes (`predict_mode`,
`predict_table`, `predict_batching`, `predict_hosts`). The slow trials (two processes,
SIGKILL) count with `configs/tiny.py:plain`'s model: none of it depends on the model's
parts."""

import concurrent.futures
import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.predict_mode import predict_files
from cfrnet_jax.inference.predict_table import OutputMismatchError
from tests.conftest import shared_data, tiny_train_config
from tests.test_user_images import picture

REPO = Path(__file__).resolve().parents[1]
# (width, height) in three padded shapes of the tiny model (a multiple of 128): 128x128
# (five pictures), 128x256 and 256x256 (one each).
SIZES = [(100, 90), (128, 128), (70, 120), (200, 100), (128, 60), (250, 250), (96, 96)]


@pytest.fixture(scope="module")
def counter():
  config = tiny_train_config(None)
  config.predict.batch_size = 3
  return CrowdCounter.from_config(config)


def mixed_folder(folder: Path) -> list[Path]:
  folder.mkdir()
  paths = [picture(folder / f"p{i}.png", size, seed=i) for i, size in enumerate(SIZES)]
  (folder / "broken.jpg").write_bytes(b"not a picture")
  return paths


def table(out: Path) -> list[dict]:
  with open(out / "counts.csv", newline="") as file:
    return list(csv.DictReader(file))


def test_batches_count_as_one_at_a_time(counter, tmp_path):
  """Pictures of one padded shape share batches of `predict.batch_size` (one compiled
  function per shape), and each count, its points and size equal `predict` on the
  picture alone (float32 reassociation: 1e-5); the table is in the files' order."""
  paths = mixed_folder(tmp_path / "photos")
  summary = predict_files(counter, [str(tmp_path / "photos")], tmp_path / "out")
  assert summary["images"] == summary["counted"] == len(SIZES)
  assert summary["already_done"] == 0 and list(summary["skipped"]) == [
      str(tmp_path / "photos" / "broken.jpg")
  ]
  assert summary["compilations"] == 3
  rows = table(tmp_path / "out")
  assert [row["file"] for row in rows] == [str(p) for p in paths]
  alone = CrowdCounter(counter.config, counter._variables)
  for row, path in zip(rows, paths):
    expected = alone.predict(path)
    assert float(row["count"]) == pytest.approx(expected.count, rel=1e-5)
    assert (int(row["height"]), int(row["width"])) == expected.image.shape[:2]
    assert int(row["points"]) == len(expected.points)
    assert int(row["bytes"]) == path.stat().st_size
    assert int(row["modified_ns"]) == path.stat().st_mtime_ns


def test_a_rerun_resumes_after_a_torn_line_and_recounts_changed_pictures(counter, tmp_path):
  """A table cut as a killed run leaves it (rows, then half a row) is resumed: the torn
  line is dropped, done pictures are skipped, the others counted, and the final table is
  the uninterrupted run's, byte for byte; a picture changed since is counted again and
  its row replaced; a table with other columns is refused."""
  mixed_folder(tmp_path / "photos")
  patterns = [str(tmp_path / "photos")]
  predict_files(counter, patterns, tmp_path / "straight")
  whole = (tmp_path / "straight" / "counts.csv").read_bytes()
  out = tmp_path / "out"
  predict_files(counter, patterns, out)
  lines = whole.split(b"\n")
  (out / "counts.csv").write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:10])
  summary = predict_files(counter, patterns, out)
  assert (summary["counted"], summary["already_done"], summary["images"]) == (5, 2, 7)
  assert (out / "counts.csv").read_bytes() == whole
  assert json.loads((out / "summary.json").read_text())["counted"] == 5
  assert not list(out.rglob(".*.tmp"))
  changed = tmp_path / "photos" / "p1.png"
  picture(changed, SIZES[1], seed=99)
  os.utime(changed, ns=(1, 1))
  summary = predict_files(counter, patterns, out)
  assert (summary["counted"], summary["already_done"]) == (1, 6)
  rows = table(out)
  assert [row["file"] for row in rows] == [row["file"] for row in table(tmp_path / "straight")]
  assert next(r for r in rows if r["file"] == str(changed))["modified_ns"] == "1"
  with pytest.raises(OutputMismatchError, match="other regions"):
    predict_files(counter, patterns, out, regions={"corner": [[0, 0], [5, 0], [5, 5]]})


def test_each_process_counts_its_share_and_they_merge_into_one_table(counter, tmp_path):
  """Two processes (threads here, meeting at a thread barrier where hosts meet at the
  coordination service's) count their shares into parts, and process 0 merges them into
  the table a single process writes."""
  from cfrnet_jax.inference import predict_hosts

  mixed_folder(tmp_path / "photos")
  patterns = [str(tmp_path / "photos")]
  predict_files(counter, patterns, tmp_path / "one")
  out, meeting, passed = tmp_path / "two", threading.Barrier(2, timeout=300), []

  def barrier(name, count):
    assert count == 2
    meeting.wait()
    passed.append(name)

  def host(index):
    own = CrowdCounter(counter.config, counter._variables)
    return predict_files(own, patterns, out, process_index=index, process_count=2)

  original, predict_hosts.barrier = predict_hosts.barrier, barrier
  try:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      summaries = list(pool.map(host, range(2)))
  finally:
    predict_hosts.barrier = original
  assert sorted(set(passed)) == ["counted", "merged", "tables read"]
  assert summaries[0] == summaries[1]
  assert summaries[0]["counted"] == len(SIZES) and summaries[0]["processes"] == 2
  assert [r["file"] for r in table(out)] == [r["file"] for r in table(tmp_path / "one")]
  for mine, single in zip(table(out), table(tmp_path / "one")):
    assert float(mine["count"]) == pytest.approx(float(single["count"]), rel=1e-6)
  assert not list(out.glob("counts.process-*")) and not list(out.glob("summary.process-*"))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


HOST_SCRIPT = textwrap.dedent("""
    import os, sys, jax
    sys.path.insert(0, {repo!r})
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=2,
                               process_id=int(os.environ["PROCESS_ID"]))
    from cfrnet_jax.inference.counter import CrowdCounter
    from cfrnet_jax.inference.predict_mode import predict_files
    counter = CrowdCounter.from_checkpoint({workdir!r})
    predict_files(counter, {patterns!r}, {out!r})
""")


@pytest.mark.slow
def test_two_processes_on_127_0_0_1_write_the_table_of_one(
    trained_plain_workdir, tmp_path, collectives_alone
):
  """Two processes under jax.distributed on 127.0.0.1 (gloo), each counting its share of
  the real sample photos, end with the table one process writes, row for row."""
  patterns = [str(shared_data("sht_sample") / "images")]
  single = CrowdCounter.from_checkpoint(trained_plain_workdir)
  predict_files(single, patterns, tmp_path / "one")
  script = HOST_SCRIPT.format(
      repo=str(REPO),
      port=_free_port(),
      workdir=str(trained_plain_workdir),
      patterns=patterns,
      out=str(tmp_path / "two"),
  )
  procs = [
      subprocess.Popen(
          [sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PROCESS_ID": str(i)}
      )
      for i in range(2)
  ]
  assert [p.wait(timeout=600) for p in procs] == [0, 0]
  two, one = table(tmp_path / "two"), table(tmp_path / "one")
  assert [r["file"] for r in two] == [r["file"] for r in one]
  for mine, single_row in zip(two, one):
    assert {k: v for k, v in mine.items() if k != "count"} == {
        k: v for k, v in single_row.items() if k != "count"
    }
    np.testing.assert_allclose(float(mine["count"]), float(single_row["count"]), rtol=1e-6)
  summary = json.loads((tmp_path / "two" / "summary.json").read_text())
  assert summary["processes"] == 2 and summary["counted"] == 5


@pytest.mark.slow
def test_predict_killed_at_random_moments_resumes_to_the_same_table(
    trained_plain_workdir, tmp_path
):
  """benchmarks/fault_trials.py --mode predict, 2 trials over real photos: every picture
  once in counts.csv, every count the uninterrupted run's."""
  from benchmarks import fault_trials

  out = tmp_path / "trials.json"
  status = fault_trials.main(
      [
          "--mode=predict",
          "--trials=2",
          f"--workdir={trained_plain_workdir}",
          f"--images={shared_data('sht_sample') / 'images'}",
          f"--images={shared_data('ucf_cc_50') / '1[0-2].jpg'}",  # 8 photos in all
          f"--folder={tmp_path / 'trials'}",
          f"--out={out}",
      ]
  )
  trials = json.loads(out.read_text())["trials"]
  assert [t["outcome"] for t in trials] == ["identical"] * 2, trials
  assert status == 0


def test_a_video_resumes_after_its_last_complete_row(counter, tmp_path):
  """A video's rows are kept as they are counted: a rerun after a kill (the table cut
  mid-row, the video unfinished in the summary) counts only the frames after the last
  complete row and ends with the uninterrupted table; a finished video is skipped."""
  pytest.importorskip("av")
  from cfrnet_jax.inference import video_io
  from cfrnet_jax.inference.predict_mode import predict_videos

  frames = [np.full((64, 96, 3), 40 * i, np.uint8) for i in range(6)]
  video = tmp_path / "clip.mp4"
  video_io.write_video(video, iter(frames), 10.0)
  predict_videos(counter, [str(video)], tmp_path / "straight")
  whole = (tmp_path / "straight" / "video" / "clip.csv").read_bytes()
  out = tmp_path / "out"
  predict_videos(counter, [str(video)], out)
  lines = whole.split(b"\n")
  (out / "video" / "clip.csv").write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:4])
  summary_path = out / "video" / "summary.json"
  summary = json.loads(summary_path.read_text())
  summary[str(video)]["finished"] = False
  summary_path.write_text(json.dumps(summary))
  resumed = predict_videos(counter, [str(video)], out)[str(video)]
  assert (resumed["frames"], resumed["counted_this_run"]) == (6, 4)
  assert (out / "video" / "clip.csv").read_bytes() == whole
  again = predict_videos(counter, [str(video)], out)[str(video)]
  assert (again["frames"], again["counted_this_run"]) == (6, 0)
