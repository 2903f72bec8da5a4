"""Predict mode's pictures: decoded ahead of the device, batched by padded shape.

`count_pictures` decodes pictures on a few host threads (`DECODE_THREADS`) while the
device counts, and holds those whose model views pad to one shape until they fill a
batch of `predict.batch_size` (`CrowdCounter.predict_batch`); a picture that needs tiles
runs alone. See `predict_mode.predict_files`, which writes what it yields.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path

from absl import logging
from tqdm import tqdm

from cfrnet_jax.data.geometry import mean_colour
from cfrnet_jax.inference.counter import CrowdCounter, Prediction
from cfrnet_jax.inference.regions import check_regions
from cfrnet_jax.inference.user_images import load_picture

# Threads that decode pictures ahead of the device (Pillow releases the GIL while it
# decodes); at most this many, and no more than the host's cores.
DECODE_THREADS = 4


def count_pictures(
    counter: CrowdCounter, paths: list[Path], regions, skipped: dict, threads: int
) -> Iterator[list[tuple[Path, Prediction]]]:
  """Batches of (path, prediction) for `paths`: pictures are decoded by `threads` threads
  a few ahead of the device, and those that run at one padded shape wait for each other
  to fill a batch of `predict.batch_size` (a picture that needs tiles runs alone). At most
  a few batches' worth of decoded pictures wait; past that the fullest batch runs part
  filled. Unreadable files go into `skipped` with the reason."""
  config = counter.config
  batch_size = config.predict.batch_size
  background = mean_colour(config.data.mean)
  threads = max(1, min(threads, os.cpu_count() or 1))

  def load(path: Path):
    view, size = load_picture(path, background, config.predict.max_megapixels, config.data.max_side)
    check_regions(regions, size[1], size[0], str(path))
    return view, size

  def run(group: list) -> list[tuple[Path, Prediction]]:
    paths_, views, sizes = zip(*group)
    return list(zip(paths_, counter.predict_batch(list(views), regions, list(sizes))))

  waiting: dict = {}  # padded shape -> [(path, view, size)], in order of arrival
  held, most_held = 0, 4 * batch_size
  with (
      concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool,
      tqdm(total=len(paths), desc="Counting", unit="image") as progress,
  ):
    ahead = collections.deque()
    queue = iter(paths)
    for path in queue:
      ahead.append((path, pool.submit(load, path)))
      if len(ahead) >= 2 * threads + batch_size:
        break
    while ahead:
      path, future = ahead.popleft()
      for more in queue:
        ahead.append((more, pool.submit(load, more)))
        break
      try:
        view, size = future.result()
      except ValueError as error:
        skipped[str(path)] = str(error)
        logging.warning("Skipped %s", error)
        progress.update()
        continue
      shape = counter.batch_shape(*view.shape[:2])
      if shape is None:  # tiles, one at a time
        yield run([(path, view, size)])
        progress.update()
        continue
      group = waiting.setdefault(shape, [])
      group.append((path, view, size))
      held += 1
      if len(group) == batch_size or held > most_held:
        fullest = shape if len(group) == batch_size else max(waiting, key=lambda s: len(waiting[s]))
        ready = waiting.pop(fullest)
        held -= len(ready)
        yield run(ready)
        progress.update(len(ready))
    for group in waiting.values():
      yield run(group)
      progress.update(len(group))
