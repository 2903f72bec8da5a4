"""Video files in and out for predict mode: sampled frames, count plots, overlay videos.

Predict mode counts the people in a video by counting a sample of its frames (every N-th
frame, or one frame every T seconds). This module is the model-free half of that: it
decodes a video with PyAV into (H, W, 3) uint8 RGB frames with their times, writes a video
of overlay frames, and plots the counts over time with matplotlib. Both libraries are
optional (`pip install -e '.[video]'`) and imported only when a function needs them.

A video that cannot be read whole is an error, never a shorter result: a count plot that
silently stops halfway through would look like a complete one. What PyAV does with a file
cut short depends on where its container keeps its index, so each case is checked:

* an .mp4 whose index (the moov atom) is at the end, where FFmpeg and many cameras put it,
  cannot be opened at all once cut: ValueError when it is opened;
* an .mp4 written with faststart (the index first, as `write_video` writes them) opens;
  with H.264 the decoder then fails on the cut packet: the frames before it are yielded,
  then ValueError. With MPEG-4 part 2, decoding ends early, as below;
* .avi, .mkv and .webm keep their header at the start; decoding a cut copy ends cleanly,
  just early. The frames are yielded, then ValueError when fewer than 90% of the frames
  the header promises were decoded: its frame count (.mp4, .avi) or, when it declares
  none (.mkv, .webm), its duration times the frame rate. A file that declares neither
  (a live stream's recording) cannot be checked this way.

Bytes damaged in the middle of a file may be concealed by the decoder (a few blocky
frames) or end decoding like a cut; only the second is seen here.
"""

from __future__ import annotations

import dataclasses
import fractions
import importlib
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

# Decoding that ends cleanly with fewer than this share of the declared frames is a cut file.
_COMPLETE_SHARE = 0.9
# Seconds of rounding allowed when comparing frame times with multiples of `every_seconds`.
_TIME_TOLERANCE = 1e-6
# FFmpeg demuxers of still images: a JPEG renamed .mp4 opens as a one-frame "video".
_IMAGE_FORMATS = ("image2", "image2pipe")

# Encoder options: quality-based rate control, so the quality does not depend on the size.
# libx264: CRF 18, about the quality at which H.264 looks like its input.
_X264_OPTIONS = {"crf": "18"}
# mpeg4: a fixed quantiser of 3 (FFmpeg's `-q:v 3`; 118 is FF_QP2LAMBDA). Its default,
# a 200 kb/s bit rate, blurs the frames (3x the pixel error of this setting in a test).
_MPEG4_OPTIONS = {"flags": "+qscale", "global_quality": str(3 * 118)}
# libvpx (VP8): constant quality 10; VP8 needs a bit rate with it, which only caps it.
_VP8_OPTIONS = {"crf": "10", "b": "50M"}


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What a video's container says about its first video stream.

  Attributes:
    frames: the declared frame count, None when the container does not say (.mkv, .webm).
    fps: the average frame rate, None when unknown.
    duration: seconds, None when unknown.
    width: frame width in pixels.
    height: frame height in pixels.
  """

  frames: int | None
  fps: float | None
  duration: float | None
  width: int
  height: int


@dataclasses.dataclass(frozen=True)
class VideoFrame:
  """One decoded frame.

  Attributes:
    index: 0-based index of the frame in the order the decoder returns frames.
    time: seconds from the stream's start, from the frame's timestamp (index / fps for a
      frame without one).
    pixels: (H, W, 3) uint8 RGB.
  """

  index: int
  time: float
  pixels: np.ndarray


def _require(module: str, package: str, purpose: str) -> ModuleType:
  """Imports `module` of the optional dependency `package`, or says how to install it."""
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise ImportError(f"{purpose} needs {package}: pip install -e '.[video]'") from error


def _import_av() -> ModuleType:
  """PyAV, or an ImportError saying how to install it."""
  return _require("av", "PyAV", "Reading and writing videos")


def require_video_extra() -> None:
  """Raises ImportError (saying how to install them) unless PyAV and matplotlib import:
  for callers that should fail before hours of work rather than at their first video."""
  _import_av()
  _require("matplotlib", "matplotlib", "Plotting counts over time")


def check_sampling(every_frames: int | None, every_seconds: float | None) -> None:
  """Raises ValueError unless at most one of `every_frames` (an integer >= 1) and
  `every_seconds` (a finite number > 0) is given (`sample_frames`'s arguments)."""
  if every_frames is not None and every_seconds is not None:
    raise ValueError("Give every_frames or every_seconds, not both.")
  if every_frames is not None and (
      isinstance(every_frames, bool)
      or not isinstance(every_frames, numbers.Integral)
      or every_frames < 1
  ):
    raise ValueError(f"every_frames must be an integer >= 1, got {every_frames!r}.")
  if every_seconds is not None and not (every_seconds > 0 and math.isfinite(every_seconds)):
    raise ValueError(f"every_seconds must be a finite number > 0, got {every_seconds!r}.")


def _open_video(path: Path):
  """The opened container of `path` and its first video stream.

  Raises ValueError naming the file when it is missing, cannot be opened, is a still
  image or has no video stream.
  """
  av = _import_av()
  if not path.is_file():
    reason = "is not a file" if path.exists() else "does not exist"
    raise ValueError(f"Video {path} {reason}.")
  try:
    container = av.open(str(path))
  except (av.error.FFmpegError, OSError) as error:
    raise ValueError(
        f"Cannot open {path} as a video ({error}): it is not a video, or it is damaged or "
        "cut short (an .mp4 cut before its index, which many writers put at the end, cannot "
        "be opened)."
    ) from error
  name = container.format.name
  if name in _IMAGE_FORMATS or name.endswith("_pipe"):
    container.close()
    raise ValueError(f"{path} is a still image ({name}), not a video.")
  if not container.streams.video:
    container.close()
    raise ValueError(f"{path} has no video stream.")
  return container, container.streams.video[0]


def _duration(container, stream) -> float | None:
  """Seconds of `stream`: its own duration, Matroska's per-track tag, or the file's."""
  if stream.duration is not None:
    return float(stream.duration * stream.time_base)
  tag = stream.metadata.get("DURATION")  # "HH:MM:SS.nnnnnnnnn", written by Matroska muxers
  if tag:
    try:
      hours, minutes, seconds = tag.split(":")
      return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
      pass  # A malformed tag: the container's duration below.
  if container.duration is not None:
    return container.duration / 1_000_000  # In AV_TIME_BASE units (microseconds).
  return None


def _info(container, stream) -> VideoInfo:
  """The `VideoInfo` of `stream` in `container`, from their headers."""
  rate = stream.average_rate
  return VideoInfo(
      frames=stream.frames or None,  # 0 when the container does not say.
      fps=float(rate) if rate else None,
      duration=_duration(container, stream),
      width=stream.codec_context.width,
      height=stream.codec_context.height,
  )


def video_info(path: str | os.PathLike) -> VideoInfo:
  """What the container of the video at `path` declares, without decoding it.

  Raises:
    ValueError: naming the file, when it does not exist, cannot be opened as a video or
      has no video stream.
    ImportError: when PyAV is not installed.
  """
  container, stream = _open_video(Path(path))
  with container:
    return _info(container, stream)


def sample_frames(
    path: str | os.PathLike, every_frames: int | None = None, every_seconds: float | None = None
) -> Iterator[VideoFrame]:
  """Decodes the first video stream of `path` and yields a sample of its frames.

  Args:
    path: the video file.
    every_frames: keep frames 0, N, 2N, ...
    every_seconds: keep the first frame at or after each multiple of T seconds (0, T,
      2T, ...) from the first frame's time; a frame is kept once even when it is the first
      after several multiples (frames further apart than T).
    At most one of the two; neither keeps every frame.

  Returns:
    An iterator of the kept frames, in decoding order. The arguments are checked now; the
    file is opened when the iteration starts.

  Raises:
    ValueError: for both arguments or an invalid one (now); naming the file (while
      iterating) when it does not exist, cannot be opened or has no video stream, and
      when it is truncated or damaged: decoding fails, or ends with fewer than 90% of the
      frames its header declares. The frames decoded before are yielded first.
    ImportError: when PyAV is not installed.
  """
  check_sampling(every_frames, every_seconds)
  return _sample(Path(path), every_frames or 1, every_seconds)


def _sample(path: Path, every_frames: int, every_seconds: float | None) -> Iterator[VideoFrame]:
  """`sample_frames` after its arguments are checked."""
  av = _import_av()
  container, stream = _open_video(path)
  with container:
    info = _info(container, stream)
    start = stream.start_time or 0
    decoder = container.decode(stream)
    count = 0  # Frames decoded.
    first_time = next_time = None
    while True:
      try:
        frame = next(decoder)
      except StopIteration:
        break
      except (av.error.FFmpegError, OSError) as error:
        raise ValueError(_truncated(path, count, f"the decoder says: {error}")) from error
      time = _frame_time(path, frame, count, start, stream.time_base, info.fps)
      if every_seconds is None:
        keep = count % every_frames == 0
      else:
        if first_time is None:
          first_time = next_time = time
        keep = time >= next_time - _TIME_TOLERANCE
        if keep:
          periods = math.floor((time - first_time + _TIME_TOLERANCE) / every_seconds)
          next_time = first_time + (periods + 1) * every_seconds
      if keep:
        yield VideoFrame(count, time, frame.to_ndarray(format="rgb24"))
      count += 1
  if info.frames is not None:
    expected, declared = info.frames, f"{info.frames} frames"
  elif info.duration is not None and info.fps is not None:
    expected = round(info.duration * info.fps)
    declared = f"{info.duration:.2f} s at {info.fps:g} fps, about {expected} frames"
  else:
    return
  if count < _COMPLETE_SHARE * expected:
    raise ValueError(_truncated(path, count, f"{count} decoded, its header declares {declared}"))


def _frame_time(path: Path, frame, index: int, start: int, time_base, fps: float | None) -> float:
  """Seconds of `frame` from the stream's start: its timestamp, else its index / fps."""
  if frame.pts is not None:
    return float((frame.pts - start) * time_base)
  if fps:
    return index / fps
  raise ValueError(f"{path}: frame {index} has no timestamp and the video no frame rate.")


def _truncated(path: Path, decoded: int, detail: str) -> str:
  """The message for a video whose decoding stopped after `decoded` frames."""
  where = f"after frame {decoded - 1}" if decoded else "before its first frame"
  return f"Video {path} is truncated or damaged: decoding stopped {where} ({detail})."


def _encoder(av: ModuleType, path: Path) -> tuple[str, dict[str, str], dict[str, str]]:
  """(codec, codec options, container options) for the suffix of `path`."""
  suffix = path.suffix.lower()
  if suffix == ".mp4":
    # faststart: the index goes first (one extra pass over the file when it is closed), so
    # a player can start before the whole file is there, and a copy cut short still
    # opens and decodes up to the cut, whereas without it nothing can be read.
    container_options = {"movflags": "+faststart"}
    if "libx264" in av.codecs_available:
      return "libx264", _X264_OPTIONS, container_options
    return "mpeg4", _MPEG4_OPTIONS, container_options
  if suffix == ".avi":
    return "mpeg4", _MPEG4_OPTIONS, {}
  if suffix == ".webm":
    return "libvpx", _VP8_OPTIONS, {}
  raise ValueError(f"Cannot write {path}: the video must be .mp4, .avi or .webm.")


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float) -> int:
  """Encodes `frames` into a video at `path` and returns how many were written.

  The codec follows the suffix: .mp4 H.264 (libx264; MPEG-4 part 2 where FFmpeg was built
  without it), .avi MPEG-4 part 2, .webm VP8; all in yuv420p, which every player reads.
  yuv420p needs even sizes: a frame of odd width or height is padded by one column or row
  repeating its last one, so the video is then one pixel wider or taller than the frames
  (padding rather than refusing, since users' photos and the overlays drawn on them often
  have odd sizes). A file left half-written by an error is removed.

  Args:
    path: the video to write; an existing file is replaced.
    frames: (H, W, 3) uint8 RGB arrays, all of the same size; read one at a time, so a
      generator does not hold the video in memory.
    fps: frames per second, > 0.

  Raises:
    ValueError: for another suffix, fps <= 0, no frames, or a frame of another shape,
      dtype or size than the first.
    ImportError: when PyAV is not installed.
  """
  av = _import_av()
  path = Path(path)
  codec, codec_options, container_options = _encoder(av, path)
  if not (fps > 0 and math.isfinite(fps)):
    raise ValueError(f"fps must be a finite number > 0, got {fps!r}.")
  # Exact rates such as 25 stay exact; NTSC's 29.97... becomes 30000/1001.
  rate = fractions.Fraction(fps).limit_denominator(1001)
  container = stream = size = None
  written = 0
  try:
    for frame in frames:
      array = np.asarray(frame)
      if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"{path}: frame {written} must be (H, W, 3) uint8 RGB, got {array.shape} "
            f"{array.dtype}."
        )
      if container is None:
        size = array.shape[:2]
        container = av.open(str(path), "w", options=container_options)
        stream = container.add_stream(codec, rate=rate, options=codec_options)
        stream.height, stream.width = (size[0] + size[0] % 2, size[1] + size[1] % 2)
        stream.pix_fmt = "yuv420p"
      elif array.shape[:2] != size:
        raise ValueError(
            f"{path}: frame {written} is {array.shape[1]}x{array.shape[0]} pixels, but the "
            f"first frame was {size[1]}x{size[0]}; all frames must have the same size."
        )
      padded = np.pad(array, ((0, size[0] % 2), (0, size[1] % 2), (0, 0)), mode="edge")
      container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))
      written += 1
    if container is None:
      raise ValueError(f"Cannot write {path}: there are no frames.")
    container.mux(stream.encode())  # Flush the frames the encoder holds back.
    container.close()
  except av.error.FFmpegError as error:
    _discard(container, path)
    raise ValueError(f"Cannot write {path}: the encoder says: {error}") from error
  except BaseException:
    _discard(container, path)
    raise
  return written


def _discard(container, path: Path) -> None:
  """Closes and removes a half-written video."""
  if container is not None:
    container.close()
    path.unlink(missing_ok=True)


def plot_counts(
    path: str | os.PathLike,
    times: Sequence[float],
    counts: Sequence[float],
    regions: dict[str, Sequence[float]] | None = None,
    title: str = "",
) -> None:
  """Writes a PNG of the count over time: one line for the whole frame, one per region.

  Drawn with matplotlib's Agg renderer (no display needed, no pyplot state touched).

  Args:
    path: the PNG to write (PNG whatever its suffix).
    times: seconds of the counted frames.
    counts: the count of each frame.
    regions: region name -> the count in that region in each frame, if any.
    title: the plot's title.

  Raises:
    ValueError: when there is nothing to plot, or a series has another length than
      `times`.
    ImportError: when matplotlib is not installed.
  """
  figure_module = _require("matplotlib.figure", "matplotlib", "Plotting counts")
  backend_agg = _require("matplotlib.backends.backend_agg", "matplotlib", "Plotting counts")
  series = [("total", counts), *(regions or {}).items()]
  if len(times) == 0:
    raise ValueError(f"Cannot plot {path}: there are no counts.")
  for name, values in series:
    if len(values) != len(times):
      raise ValueError(
          f"Cannot plot {path}: {len(times)} times but {len(values)} counts for {name!r}."
      )
  figure = figure_module.Figure(figsize=(10, 4), dpi=100, layout="constrained")
  backend_agg.FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for name, values in series:
    axes.plot(times, values, marker=".", label=name)
  # Counts from 0 (or below, should a density map sum to less), so sizes compare at a glance.
  axes.set_ylim(bottom=min(0.0, *(min(values) for _, values in series)))
  axes.set(xlabel="time (s)", ylabel="people counted", title=title)
  axes.grid(alpha=0.3)
  axes.legend()
  figure.savefig(path, format="png")
