"""Video files in and out (`cfrnet_jax.inference.video_io`), on videos encoded here.

Most videos are made of synthetic frames that carry their own index: a band across the top
whose grey level is 16 + 7 * index, robust to lossy compression (read to the nearest of
levels 7 apart; codecs shift a flat band by far less), over noise that gives each frame its
share of the file's bytes, so cutting a file at half its size cuts it at about half its
frames.
The pixel-accuracy test uses real photos.
"""

import sys
import wave

import numpy as np
import pytest
from PIL import Image

from cfrnet_jax.inference import video_io
from tests.conftest import shared_data

FPS = 10
NUM_FRAMES = 30
SUFFIXES = (".mp4", ".avi", ".webm")
_BAND_ROWS = 16


def coded_frame(index: int, width: int = 64, height: int = 48) -> np.ndarray:
  """A frame whose top band's grey level encodes `index`, over noise seeded by it."""
  frame = np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)
  frame[:_BAND_ROWS] = 16 + 7 * index
  return frame


def decoded_index(pixels: np.ndarray) -> int:
  """The index a decoded `coded_frame` carries (its band's middle, away from the noise)."""
  level = pixels[2 : _BAND_ROWS - 4, 4:-4].mean()
  return round((level - 16) / 7)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """suffix -> (path, frames written) of NUM_FRAMES coded frames at FPS."""
  folder = tmp_path_factory.mktemp("videos")
  frames = [coded_frame(i) for i in range(NUM_FRAMES)]
  written = {}
  for suffix in SUFFIXES:
    path = folder / f"coded{suffix}"
    written[suffix] = (path, video_io.write_video(path, iter(frames), FPS))
  return written


def truncated_copy(path, folder):
  """A copy of `path` holding the first half of its bytes."""
  data = path.read_bytes()
  copy = folder / f"cut_{path.name}"
  copy.write_bytes(data[: len(data) // 2])
  return copy


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_video_info_reports_what_was_written(videos, suffix):
  path, written = videos[suffix]
  info = video_io.video_info(path)
  assert written == NUM_FRAMES
  # WebM (Matroska) declares no frame count, only a duration.
  assert info.frames == (None if suffix == ".webm" else NUM_FRAMES)
  assert info.fps == pytest.approx(FPS)
  assert (info.width, info.height) == (64, 48)
  assert info.duration == pytest.approx(NUM_FRAMES / FPS, abs=0.5 / FPS)


# Expected indexes at 10 fps (frame i at i / 10 s).
SAMPLINGS = [
    ({}, list(range(NUM_FRAMES))),
    ({"every_frames": 3}, list(range(0, NUM_FRAMES, 3))),
    ({"every_seconds": 0.5}, [0, 5, 10, 15, 20, 25]),
    # Multiples 0, 0.25, 0.5, 0.75, ...: the first frame at or after each.
    ({"every_seconds": 0.25}, [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]),
    # Several multiples fall before each next frame: every frame once, none twice.
    ({"every_seconds": 0.03}, list(range(NUM_FRAMES))),
]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize(("kwargs", "expected"), SAMPLINGS)
def test_sample_frames_keeps_the_expected_frames(videos, suffix, kwargs, expected):
  frames = list(video_io.sample_frames(videos[suffix][0], **kwargs))
  assert [frame.index for frame in frames] == expected
  assert [frame.time for frame in frames] == pytest.approx([i / FPS for i in expected])
  # The pixels are those of the frame of that index, not of a neighbour.
  assert [decoded_index(frame.pixels) for frame in frames] == expected
  assert all(frame.pixels.shape == (48, 64, 3) for frame in frames)
  assert all(frame.pixels.dtype == np.uint8 for frame in frames)


# Bounds on the mean absolute error (of 255) of a decoded photo. Most of it is yuv420p's
# chroma subsampling, 3-7 on these small, busy 160x120 crowd photos (measured up to 8.2 in
# all); the codec's own loss, measured against the photo after a yuv420p round trip, is
# 2-4. Another photo is 50+ away.
MAX_PHOTO_ERROR = 10.0
MAX_CODEC_ERROR = 5.0


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_decoded_pixels_are_close_to_the_written_photos(tmp_path, suffix):
  av = pytest.importorskip("av")
  folder = shared_data("sht_sample/images")
  photos = []
  for i in range(1, 6):
    with Image.open(folder / f"IMG_{i}.jpg") as image:
      photos.append(np.asarray(image.convert("RGB").resize((160, 120), Image.BILINEAR)))
  subsampled = [
      av.VideoFrame.from_ndarray(photo, format="rgb24").reformat(format="yuv420p")
      for photo in photos
  ]
  subsampled = [frame.to_ndarray(format="rgb24").astype(int) for frame in subsampled]
  written = [photos[i // 2] for i in range(2 * len(photos))]  # Each photo for 2 frames.
  path = tmp_path / f"photos{suffix}"
  assert video_io.write_video(path, written, fps=5) == len(written)
  decoded = [frame.pixels for frame in video_io.sample_frames(path)]
  assert len(decoded) == len(written)
  for i, pixels in enumerate(decoded):
    errors = [np.abs(pixels.astype(int) - photo).mean() for photo in photos]
    assert errors[i // 2] < MAX_PHOTO_ERROR
    assert np.abs(pixels - subsampled[i // 2]).mean() < MAX_CODEC_ERROR
    assert np.argmin(errors) == i // 2


def test_odd_sizes_are_padded_with_the_last_row_and_column(tmp_path):
  frame = np.zeros((25, 33, 3), np.uint8)
  frame[:, -1] = 200  # A bright last column, repeated by the padding.
  frame[-1, :] = 100
  path = tmp_path / "odd.mp4"
  video_io.write_video(path, [frame] * 3, fps=FPS)
  info = video_io.video_info(path)
  assert (info.width, info.height) == (34, 26)
  pixels = next(video_io.sample_frames(path)).pixels.astype(int)
  assert np.abs(pixels[:25, :33] - frame).mean() < 3
  assert np.abs(pixels[:24, 33] - 200).max() < 25 and np.abs(pixels[25, :32] - 100).max() < 25


def test_write_video_refuses_what_it_cannot_write(tmp_path):
  frame = np.zeros((16, 16, 3), np.uint8)
  with pytest.raises(ValueError, match=r"\.mp4, \.avi or \.webm"):
    video_io.write_video(tmp_path / "a.gif", [frame], fps=FPS)
  with pytest.raises(ValueError, match="fps"):
    video_io.write_video(tmp_path / "a.mp4", [frame], fps=0)
  with pytest.raises(ValueError, match="no frames"):
    video_io.write_video(tmp_path / "a.mp4", [], fps=FPS)
  with pytest.raises(ValueError, match="uint8"):
    video_io.write_video(tmp_path / "a.mp4", [frame.astype(np.float32)], fps=FPS)
  path = tmp_path / "sizes.mp4"
  with pytest.raises(ValueError, match="same size"):
    video_io.write_video(path, [frame, frame, np.zeros((16, 18, 3), np.uint8)], fps=FPS)
  assert not path.exists()  # Not left half-written.


def test_mp4_falls_back_to_mpeg4_without_libx264(tmp_path, monkeypatch):
  av = pytest.importorskip("av")
  monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
  path = tmp_path / "fallback.mp4"
  video_io.write_video(path, [coded_frame(i) for i in range(3)], fps=FPS)
  with av.open(str(path)) as container:
    assert container.streams.video[0].codec_context.name == "mpeg4"
  assert [decoded_index(frame.pixels) for frame in video_io.sample_frames(path)] == [0, 1, 2]


def unreadable_files(folder):
  """name -> a file that is not a readable video."""
  text = folder / "notes.mp4"
  text.write_text("These are not the frames you are looking for.\n" * 20)
  jpeg = folder / "photo.mp4"
  Image.fromarray(coded_frame(0)).save(jpeg, format="JPEG")
  audio = folder / "sound.wav"
  with wave.open(str(audio), "wb") as file:
    file.setnchannels(1)
    file.setsampwidth(2)
    file.setframerate(8000)
    file.writeframes(np.zeros(8000, np.int16).tobytes())
  return {
      "missing": (folder / "missing.mp4", "does not exist"),
      "text": (text, "Cannot open"),
      "jpeg": (jpeg, "still image"),
      "audio": (audio, "no video stream"),
  }


@pytest.mark.parametrize("name", ["missing", "text", "jpeg", "audio"])
def test_unreadable_files_raise_value_errors_naming_them(tmp_path, name):
  path, message = unreadable_files(tmp_path)[name]
  for read in (video_io.video_info, lambda path: list(video_io.sample_frames(path))):
    with pytest.raises(ValueError, match=message) as error:
      read(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_truncated_video_yields_the_frames_before_the_cut_then_fails(videos, tmp_path, suffix):
  """.mp4 (faststart): the decoder fails at the cut; .avi and .webm: decoding ends early,
  short of the frame count (.avi) or duration (.webm) in the header."""
  path = truncated_copy(videos[suffix][0], tmp_path)
  frames = []
  with pytest.raises(ValueError, match="truncated or damaged") as error:
    for frame in video_io.sample_frames(path):
      frames.append(frame)
  assert str(path) in str(error.value)
  assert 0.2 * NUM_FRAMES <= len(frames) <= 0.8 * NUM_FRAMES
  assert [frame.index for frame in frames] == list(range(len(frames)))
  # The last frame may be cut inside its data, and the decoder may then conceal it with
  # the frame before (seen once for .avi): every earlier frame shows its own picture.
  shown = [decoded_index(frame.pixels) for frame in frames]
  assert shown[:-1] == list(range(len(frames) - 1))
  assert shown[-1] in (len(frames) - 2, len(frames) - 1)


def test_a_truncated_mp4_with_its_index_at_the_end_cannot_be_opened(tmp_path):
  """How cameras write .mp4 (no faststart): the cut removes the index, nothing is read."""
  av = pytest.importorskip("av")
  path = tmp_path / "camera.mp4"
  with av.open(str(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i in range(NUM_FRAMES):
      container.mux(stream.encode(av.VideoFrame.from_ndarray(coded_frame(i), format="rgb24")))
    container.mux(stream.encode())
  assert len(list(video_io.sample_frames(path))) == NUM_FRAMES
  cut = truncated_copy(path, tmp_path)
  for read in (video_io.video_info, lambda path: list(video_io.sample_frames(path))):
    with pytest.raises(ValueError, match="cut short") as error:
      read(cut)
    assert str(cut) in str(error.value)


def test_plot_counts_writes_a_png_with_a_line_per_region(tmp_path):
  times = [0.5 * i for i in range(20)]
  counts = [100 + 10 * np.sin(t) for t in times]
  regions = {"left": [c / 3 for c in counts], "right": [2 * c / 3 for c in counts]}
  video_io.plot_counts(tmp_path / "total.png", times, counts, title="IMG_1")
  video_io.plot_counts(tmp_path / "regions.png", times, counts, regions, title="IMG_1")
  orange = np.array([255, 127, 14])  # matplotlib's second colour: the first region's line.
  for name, has_regions in (("total.png", False), ("regions.png", True)):
    with Image.open(tmp_path / name) as image:
      assert image.format == "PNG" and image.width >= 600 and image.height >= 300
      pixels = np.asarray(image.convert("RGB")).astype(int)
    orange_pixels = (np.abs(pixels - orange).max(-1) < 10).sum()
    assert (orange_pixels > 100) == has_regions
  with pytest.raises(ValueError, match="'left'"):
    video_io.plot_counts(tmp_path / "bad.png", times, counts, {"left": counts[:-1]})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"every_frames": 2, "every_seconds": 1.0},
        {"every_frames": 0},
        {"every_frames": -3},
        {"every_frames": 1.5},
        {"every_seconds": 0},
        {"every_seconds": -0.5},
        {"every_seconds": float("nan")},
    ],
)
def test_sample_frames_refuses_invalid_arguments_at_once(kwargs):
  # Checked when called, before the (here missing) file is opened.
  with pytest.raises(ValueError, match="every_"):
    video_io.sample_frames("missing.mp4", **kwargs)


def test_missing_optional_dependencies_say_how_to_install_them(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "av", None)  # Makes `import av` fail.
  with pytest.raises(ImportError, match=r"PyAV: pip install -e '\.\[video\]'"):
    video_io.video_info(tmp_path / "a.mp4")
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
  with pytest.raises(ImportError, match=r"matplotlib: pip install -e '\.\[video\]'"):
    video_io.plot_counts(tmp_path / "a.png", [0.0], [1.0])
