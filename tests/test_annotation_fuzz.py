"""Damaged annotation files for every builder: each ends in a clear error naming the file
or in points dropped, logged and counted - never in a silently wrong count.

Every annotation format the builders read (ShanghaiTech `GT_IMG_k.mat`, UCF_CC_50
`k_ann.mat`, JHU-Crowd++ `gt/k.txt` and `image_labels.txt`, NWPU-Crowd `jsons/k.json`
and `train.txt`) gets each class of damage: random bytes, truncation at every length,
a valid container with wrong or missing keys, NaN and infinite, negative and huge
coordinates, empty point lists (valid: count 0), wrong array shapes, non-numeric
entries, an empty file, damaged count fields and per-head attributes. The `.mat` files
also get every single-bit flip, a zip archive a flipped bit in every byte, and the
images random bytes, truncation and decompression bombs. The cases are parsed with each
builder's own parse function and screened against a 40x30 image as the builders do
(`screen_points`); some go through `_generate_examples` to check the logs and the split
summary, and three through full TFDS builds.

`python tests/test_annotation_fuzz.py` prints the table of every case and its outcome
(docs/reliability.md).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import logging
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from tfds_crowd import jhu_crowd, nwpu_crowd, shanghaitech, ucf_cc_50
from tfds_crowd.crowd_builder import CrowdDataError, image_size, screen_points
from tfds_crowd.manual_source import ManualSource

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
WIDTH, HEIGHT = 40, 30  # the image every parsed annotation is screened against
GOOD = [[1.5, 2.5], [30.0, 20.0], [39.0, 29.0]]  # three heads inside it
NAN, INF = float("nan"), float("inf")


# Valid files of each format ------------------------------------------------------------


def sht_mat(location, number=None, compress=False, info=None) -> bytes:
  """`image_info{1}.location` / `.number`, nested like the official files."""
  cell = np.empty((1, 1), dtype=object)
  if info is None:
    location = np.asarray(location, np.float64).reshape(-1, 2)
    info = {
        "location": location,
        "number": np.array([[len(location) if number is None else number]], np.float64),
    }
  cell[0, 0] = info
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, {"image_info": cell}, do_compression=compress)
  return buffer.getvalue()


def ucf_mat(points, compress=False, key="annPoints") -> bytes:
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, {key: points}, do_compression=compress)
  return buffer.getvalue()


def jhu_lines(points, attributes="4 5 1 0") -> bytes:
  return "".join(f"{x} {y} {attributes}\n" for x, y in points).encode()


def nwpu_json(heads, human_num=None, **fields) -> bytes:
  """An NWPU json of `heads`, with a box around each of those inside the image (a
  damaged coordinate has no box); `fields` replace any key."""
  inside = [(x, y) for x, y in heads if 0 <= x <= WIDTH and 0 <= y <= HEIGHT]
  record = {
      "img_id": "0001.jpg",
      "human_num": len(heads) if human_num is None else human_num,
      "points": heads,
      "boxes": [[x - 2, y - 2, x + 2, y + 2] for x, y in inside],
      **fields,
  }
  return json.dumps(record).encode()


def random_bytes(seed: int, low: int = 64, high: int = 4096) -> bytes:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, int(rng.integers(low, high)), dtype=np.uint8).tobytes()


def jpeg(height: int = HEIGHT, width: int = WIDTH) -> bytes:
  from PIL import Image

  pixels = np.random.default_rng(height * width).integers(0, 255, (height, width, 3))
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG")
  return buffer.getvalue()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
  """A 200-byte PNG that declares width x height pixels."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (
      b"\x89PNG\r\n\x1a\n"
      + chunk(b"IHDR", header)
      + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
      + chunk(b"IEND", b"")
  )


JHU_LABELS = b"0001,3,marketplace,2,0\n0002,0,street,0,1\n"
NWPU_LIST = b"0001 1 2\n0002 0 1\n0003 3 4\n"


# Formats: a valid file from points, and the builder's parse function -------------------


def jhu_parse(data, where):
  return jhu_crowd.parse_head_lines(jhu_crowd.decode_text(data, where), where)[:, :2]


def labels_parse(data, where):
  return jhu_crowd.parse_image_labels(jhu_crowd.decode_text(data, where), where)


def list_parse(data, where):
  return nwpu_crowd.parse_split_list(nwpu_crowd.decode_text(data, where), where)


@dataclasses.dataclass(frozen=True)
class Format:
  title: str
  where: str  # the file's name, as the builders describe it in messages
  parse: Callable[[bytes, str], object]
  write: Callable[[list], bytes] | None = None  # a valid file holding these points
  valid: bytes = b""  # a valid file (of `GOOD` where it holds points)


FORMATS = {
    "shanghaitech": Format(
        "ShanghaiTech GT_IMG_k.mat",
        "manual/part_A/train_data/ground-truth/GT_IMG_1.mat",
        lambda d, w: shanghaitech.parse_ground_truth(d, w)[0],
        sht_mat,
        sht_mat(GOOD),
    ),
    "ucf_cc_50": Format(
        "UCF_CC_50 k_ann.mat",
        "manual/UCF_CC_50.zip:UCF_CC_50/1_ann.mat",
        ucf_cc_50.parse_annotation,
        lambda points: ucf_mat(np.asarray(points, np.float64).reshape(-1, 2)),
        ucf_mat(np.float64(GOOD)),
    ),
    "jhu_gt": Format(
        "JHU-Crowd++ gt/k.txt",
        "manual/jhu_crowd_v2.0/train/gt/0001.txt",
        jhu_parse,
        jhu_lines,
        jhu_lines(GOOD),
    ),
    "jhu_labels": Format(
        "JHU-Crowd++ image_labels.txt",
        "manual/jhu_crowd_v2.0/train/image_labels.txt",
        labels_parse,
        valid=JHU_LABELS,
    ),
    "nwpu_json": Format(
        "NWPU-Crowd jsons/k.json",
        "manual/jsons.zip:jsons/0001.json",
        lambda d, w: nwpu_crowd.parse_annotation(d, w)[0],
        nwpu_json,
        nwpu_json(GOOD),
    ),
    "nwpu_list": Format("NWPU-Crowd train.txt", "manual/train.txt", list_parse, valid=NWPU_LIST),
    "image": Format(
        "image k.jpg (every dataset)",
        "manual/part_A/train_data/images/IMG_1.jpg",
        image_size,
        valid=jpeg(),
    ),
}
POINT_FORMATS = ("shanghaitech", "ucf_cc_50", "jhu_gt", "nwpu_json")
MAT_FORMATS = ("shanghaitech", "ucf_cc_50")


# Expected outcomes -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Error:
  """A `CrowdDataError` naming the file whose message matches `pattern`."""

  pattern: str = ""


@dataclasses.dataclass(frozen=True)
class Count:
  """Parsed, then screened against the image: `count` kept, the rest dropped and
  counted by reason."""

  count: int
  nonfinite: int = 0
  outside: int = 0
  clipped: int = 0


@dataclasses.dataclass(frozen=True)
class ErrorOrSame:
  """An error naming the file, or exactly what the undamaged file gives."""


@dataclasses.dataclass(frozen=True)
class ErrorOrPrefix:
  """An error naming the file, or the complete lines before the cut (a text file cut at
  a line end; JHU's `image_labels.txt` count then disagrees, which is logged and counted,
  see `test_generate_logs_and_counts_every_drop`)."""

  lines: int


Expectation = Error | Count | ErrorOrSame | ErrorOrPrefix


@dataclasses.dataclass(frozen=True)
class Case:
  label: str
  data: bytes
  expect: Expectation


def outcome(fmt: Format, data: bytes):
  """What parsing `data` gives: a `CrowdDataError`, or the parse result."""
  try:
    return fmt.parse(data, fmt.where)
  except CrowdDataError as error:
    return error


def in_words(points: np.ndarray) -> str:
  screened = screen_points(points, WIDTH, HEIGHT)
  text = f"count {len(screened.points)}"
  drops = [
      f"{screened.nonfinite} NaN/inf" if screened.nonfinite else "",
      f"{screened.outside} outside" if screened.outside else "",
  ]
  if any(drops):
    text += f", {' + '.join(d for d in drops if d)} dropped and counted"
  if screened.clipped:
    text += f", {screened.clipped} moved onto the border and counted"
  return text


def check(fmt: Format, case: Case) -> str:
  """Runs one case, asserts its expectation and returns the outcome in words."""
  result = outcome(fmt, case.data)
  context = f"{fmt.title}, {case.label}: {result!r}"
  expect = case.expect
  if isinstance(result, CrowdDataError):
    message = str(result)
    assert isinstance(expect, (Error, ErrorOrSame, ErrorOrPrefix)), context
    assert message.startswith(fmt.where), context  # names the file
    assert len(message) > len(fmt.where) + 15, context  # and says what is wrong
    if isinstance(expect, Error):
      assert expect.pattern.lower() in message.lower(), (expect.pattern, context)
    return "error: " + message[len(fmt.where) :].lstrip(":, ")
  if isinstance(expect, ErrorOrSame):
    reference = fmt.parse(fmt.valid, fmt.where)
    if isinstance(reference, np.ndarray):
      np.testing.assert_array_equal(result, reference, err_msg=context)
    else:
      assert result == reference, context
    return "same as undamaged"
  if isinstance(expect, ErrorOrPrefix):
    reference = fmt.parse(fmt.valid, fmt.where)
    if isinstance(reference, np.ndarray):
      np.testing.assert_array_equal(result, reference[: expect.lines], err_msg=context)
    else:
      assert result == dict(list(reference.items())[: expect.lines]), context
    return f"the {expect.lines} complete lines"
  assert isinstance(expect, Count), context
  screened = screen_points(result, WIDTH, HEIGHT)
  got = Count(len(screened.points), screened.nonfinite, screened.outside, screened.clipped)
  assert got == expect, context
  return in_words(result)


# Damage classes: name -> {format: cases} -------------------------------------------------


def random_cases(key: str) -> list[Case]:
  cases = [Case(f"random bytes, seed {seed}", random_bytes(seed), Error()) for seed in range(8)]
  if key in MAT_FORMATS:  # past scipy's header check, into the element parser
    header = FORMATS[key].valid[:128]
    cases += [
        Case(
            f"MAT v5 header + random bytes, seed {seed}", header + random_bytes(100 + seed), Error()
        )
        for seed in range(8)
    ]
    cases += [  # a zero in the first 4 bytes: scipy reads it as MAT v4
        Case(f"MAT v4-like random bytes, seed {seed}", b"\x00" + random_bytes(200 + seed), Error())
        for seed in range(4)
    ]
  return cases


def truncated_cases(key: str) -> list[Case]:
  fmt = FORMATS[key]
  variants = [("", fmt.valid)]
  if key == "shanghaitech":
    variants.append((" (compressed)", sht_mat(GOOD, compress=True)))
  if key == "ucf_cc_50":
    variants.append((" (compressed)", ucf_mat(np.float64(GOOD), compress=True)))
  cases = []
  for suffix, full in variants:
    for cut in range(1, len(full)):
      data = full[:cut]
      if key in ("jhu_gt", "jhu_labels", "nwpu_list"):  # a line cut before its newline is whole
        expect = ErrorOrPrefix(data.count(b"\n") + (full[cut : cut + 1] == b"\n"))
      else:
        expect = ErrorOrSame()
      cases.append(Case(f"first {cut} of {len(full)} bytes{suffix}", data, expect))
  return cases


def _info(**fields):
  return {"location": np.float64(GOOD), "number": np.array([[3.0]]), **fields}


def struct_array(size: int) -> np.ndarray:
  array = np.zeros((1, size), dtype=[("location", object), ("number", object)])
  for i in range(size):
    array[0, i] = (np.float64(GOOD), 3.0)
  return array


def v73(data: bytes) -> bytes:
  """`data` with the version field of a MATLAB v7.3 (HDF5) file."""
  return data[:124] + b"\x00\x02" + data[126:]


WRONG_KEYS = {
    "shanghaitech": [
        Case("a MATLAB v7.3 (HDF5) header", v73(sht_mat(GOOD)), Error("v7.3 (HDF5)")),
        Case(
            "no image_info",
            ucf_mat(np.float64(GOOD), key="annPoints"),
            Error("no field 'image_info'"),
        ),
        Case(
            "image_info without location",
            sht_mat(None, info={"number": np.array([[3.0]])}),
            Error("no field 'image_info.location'"),
        ),
        Case(
            "image_info without number",
            sht_mat(None, info={"location": np.float64(GOOD)}),
            Error("no field 'image_info.number'"),
        ),
        Case(
            "location misspelt",
            sht_mat(None, info={"Location": np.float64(GOOD), "number": 3.0}),
            Error("no field 'image_info.location'"),
        ),
        Case(
            "image_info a plain matrix",
            ucf_mat(np.float64(GOOD), key="image_info"),
            Error("no field 'image_info.location'"),
        ),
        Case(
            "image_info a 1x2 struct array",
            ucf_mat(struct_array(2), key="image_info"),
            Error("array of 2 structs or cells"),
        ),
        Case(
            "image_info a 0x1 struct array",
            ucf_mat(struct_array(0), key="image_info"),
            Error("array of 0 structs or cells"),
        ),
        Case(
            "image_info a 1x2 cell of structs",
            ucf_mat(np.array([[_info(), _info()]], dtype=object), key="image_info"),
            Error("array of 2 structs or cells"),
        ),
    ],
    "ucf_cc_50": [
        Case("a MATLAB v7.3 (HDF5) header", v73(ucf_mat(np.float64(GOOD))), Error("v7.3 (HDF5)")),
        Case(
            "annPoints misspelt annpoints",
            ucf_mat(np.float64(GOOD), key="annpoints"),
            Error("no field 'annPoints'"),
        ),
        Case("ShanghaiTech's image_info instead", sht_mat(GOOD), Error("no field 'annPoints'")),
        Case("annPoints a struct", ucf_mat({"x": np.float64(GOOD)}), Error("must be real numbers")),
    ],
    "jhu_gt": [
        Case(
            "5 fields per line", b"1 2 3 4 5\n", Error("line 1: expected 'x y w h occlusion blur'")
        ),
        Case("7 fields per line", b"1 2 3 4 5 1 0\n", Error("line 1: expected")),
        Case("comma-separated", b"1,2,4,5,1,0\n", Error("line 1: expected")),
        Case("a header line", b"x y w h o b\n1 2 4 5 1 0\n", Error("line 1: expected")),
    ],
    "jhu_labels": [
        Case("4 fields", b"0001,3,marketplace,2\n", Error("line 1: expected 'image,count")),
        Case("6 fields", b"0001,3,marketplace,2,0,9\n", Error("line 1: expected")),
        Case("space-separated", b"0001 3 marketplace 2 0\n", Error("line 1: expected")),
        Case(
            "image listed twice",
            JHU_LABELS + b"0001,4,street,0,0\n",
            Error("line 3: a second line"),
        ),
    ],
    "nwpu_json": [
        Case("no points", json.dumps({"human_num": 3}).encode(), Error("no 'points'")),
        Case("no human_num", json.dumps({"points": GOOD}).encode(), Error("no 'human_num'")),
        Case(
            "points misspelt",
            json.dumps({"point": GOOD, "human_num": 3}).encode(),
            Error("no 'points'"),
        ),
        Case("a JSON list", json.dumps([GOOD]).encode(), Error("expected a JSON object")),
        Case("a JSON string", b'"points"', Error("expected a JSON object")),
        Case("JSON null", b"null", Error("expected a JSON object")),
        Case(
            "points an object",
            json.dumps({"points": {"x": 1}, "human_num": 1}).encode(),
            Error("not an (N, 2) array of numbers"),
        ),
    ],
    "nwpu_list": [
        Case(
            "image listed twice",
            NWPU_LIST + b"0001 1 2\n",
            Error("line 4: image 0001 is listed twice"),
        ),
        Case("labels missing on one line", b"0001 1 2\n0002\n", Error("line 2: expected")),
        Case("3 labels", b"0001 1 2 3\n", Error("line 1: expected")),
        Case("comma-separated", b"0001,1,2\n", Error("line 1: expected an image id")),
    ],
}


def point_cases(key: str, label: str, points, expect: Expectation) -> Case:
  return Case(label, FORMATS[key].write(points), expect)


def nonfinite_cases(key: str) -> list[Case]:
  return [
      point_cases(key, "x = NaN", GOOD + [[NAN, 5.0]], Count(3, nonfinite=1)),
      point_cases(key, "y = +inf", GOOD + [[5.0, INF]], Count(3, nonfinite=1)),
      point_cases(key, "x = -inf, y = NaN", GOOD + [[-INF, NAN]], Count(3, nonfinite=1)),
      point_cases(key, "every point NaN", [[NAN, NAN]] * 4, Count(0, nonfinite=4)),
  ]


def negative_cases(key: str) -> list[Case]:
  return [
      point_cases(key, "x = -0.5 (within 1 px)", GOOD + [[-0.5, 3.0]], Count(4, clipped=1)),
      point_cases(key, "x = -5", GOOD + [[-5.0, 3.0]], Count(3, outside=1)),
      point_cases(key, "y = -1e12", GOOD + [[3.0, -1e12]], Count(3, outside=1)),
      point_cases(key, "x = -0.0", GOOD + [[-0.0, 3.0]], Count(4)),
  ]


def huge_cases(key: str) -> list[Case]:
  cases = [
      point_cases(key, "x = 1e12", GOOD + [[1e12, 5.0]], Count(3, outside=1)),
      point_cases(key, "y = 1e12", GOOD + [[5.0, 1e12]], Count(3, outside=1)),
      point_cases(key, "x = y = 1e308", GOOD + [[1e308, 1e308]], Count(3, outside=1)),
      point_cases(
          key,
          "x = 40.9 (within 1 px of the 40-px width)",
          GOOD + [[40.9, 5.0]],
          Count(4, clipped=1),
      ),
  ]
  if key == "nwpu_json":
    cases += [
        Case(
            "x = 1e400 (JSON number beyond float64: inf)",
            nwpu_json(GOOD).replace(b"39.0", b"1e400", 1),
            Count(2, nonfinite=1),
        ),
        Case("x = 10**30 (JSON integer)", nwpu_json(GOOD + [[10**30, 1]]), Count(3, outside=1)),
        Case(
            "x = 10**400 (JSON integer beyond float64)",
            nwpu_json(GOOD + [[10**400, 1]]),
            Error("too large"),
        ),
    ]
  if key == "jhu_gt":
    cases.append(
        Case(
            "x = 1e400 (text beyond float64: inf)",
            b"1e400 5 4 5 1 0\n" + jhu_lines(GOOD),
            Count(3, nonfinite=1),
        )
    )
  return cases


def empty_list_cases(key: str) -> list[Case]:
  cases = [point_cases(key, "no heads", [], Count(0))]
  if key == "shanghaitech":
    cases += [
        Case(
            "location 0x0 ([])",
            sht_mat(None, info={"location": np.zeros((0, 0)), "number": 0.0}),
            Count(0),
        ),
        Case(
            "location 1x0",
            sht_mat(None, info={"location": np.zeros((1, 0)), "number": 0.0}),
            Count(0),
        ),
        Case("location empty, number 5 (mismatch logged)", sht_mat([], number=5), Count(0)),
    ]
  if key == "ucf_cc_50":
    cases += [
        Case("annPoints 0x0 ([])", ucf_mat(np.zeros((0, 0))), Count(0)),
        Case("annPoints 1x0", ucf_mat(np.zeros((1, 0))), Count(0)),
        Case("annPoints an empty cell {}", ucf_mat(np.zeros((0, 0), dtype=object)), Error("cell")),
    ]
  if key == "jhu_gt":
    cases.append(Case("only blank lines", b"\n  \n\t\n", Count(0)))
  if key == "nwpu_json":
    cases.append(Case("points [[]]", nwpu_json([], points=[[]]), Count(0)))
  return cases


def shape_cases(key: str) -> list[Case]:
  if key == "jhu_gt":
    return [
        Case("3 fields (x y w)", b"1 2 4\n", Error("line 1: expected")),
        Case("one field", jhu_lines(GOOD) + b"7\n", Error("line 4: expected")),
        Case("two heads on one line", b"1 2 4 5 1 0 3 4 4 5 1 0\n", Error("line 1: expected")),
    ]
  arrays = {
      "N x 3": np.ones((3, 3)),
      "N x 1": np.ones((3, 1)),
      "2 x N (transposed)": np.float64(GOOD).T,
      "1 x 2N (flattened)": np.float64(GOOD).reshape(1, -1),
      "3-D (1, N, 2)": np.ones((1, 3, 2)),
      "N x 0": np.zeros((3, 0)),
  }
  if key == "nwpu_json":
    cases = [
        Case(label, nwpu_json([], points=a.tolist()), Error("must be an (N, 2) array"))
        for label, a in arrays.items()
    ]
    cases += [
        Case("1-D [x, y, x, y]", nwpu_json([], points=[1, 2, 3, 4]), Error("got shape (4,)")),
        Case("a bare number", nwpu_json([], points=5), Error("got shape ()")),
        Case("ragged rows", nwpu_json([], points=[[1, 2], [3]]), Error("not an (N, 2) array")),
    ]
    return cases
  if key == "shanghaitech":
    write = lambda a: sht_mat(None, info={"location": a, "number": 3.0})  # noqa: E731
  else:
    write = ucf_mat
  return [Case(label, write(a), Error("must be an (N, 2) array")) for label, a in arrays.items()]


def nonnumeric_cases(key: str) -> list[Case]:
  if key == "jhu_gt":
    return [
        Case("letters", b"a b c d e f\n", Error("line 1: expected")),
        Case(
            "one letter among numbers",
            jhu_lines(GOOD) + b"1 2 4 5 x 0\n",
            Error("line 4: expected"),
        ),
        Case("hex numbers", b"0x10 2 4 5 1 0\n", Error("line 1: expected")),
    ]
  if key == "nwpu_json":
    return [
        Case("strings", nwpu_json([], points=[["1", "2"]], human_num=1), Error("found '1' (str)")),
        Case("null", nwpu_json([], points=[[1, None]], human_num=1), Error("found None")),
        Case(
            "true/false", nwpu_json([], points=[[1, True]], human_num=1), Error("found True (bool)")
        ),
        Case("objects", nwpu_json([], points=[{"x": 1, "y": 2}], human_num=1), Error("(dict)")),
    ]
  values = {
      "a string": (np.array(["abc"]), "must be real numbers, got an array of <U3"),
      "complex numbers": (np.array([[1 + 2j, 3.0]]), "complex numbers (annotations are real)"),
      "logical (true/false)": (np.array([[True, False]]), "array of bool"),
      "a cell of points": (np.array([[np.ones((1, 2)), np.ones((1, 2))]], dtype=object), "cell"),
  }
  if key == "shanghaitech":
    write = lambda a: sht_mat(None, info={"location": a, "number": 1.0})  # noqa: E731
  else:
    write = ucf_mat
  return [Case(label, write(a), Error(message)) for label, (a, message) in values.items()]


def empty_file_cases(key: str) -> list[Case]:
  expect = {
      "jhu_gt": Count(0),  # JHU gives an image without heads an empty gt file
      "jhu_labels": ErrorOrPrefix(0),  # no labels: the builder then names the image
      "nwpu_list": Error("lists no images"),
      "image": Error("cannot decode the image"),
  }.get(key, Error("empty" if key in MAT_FORMATS else "not valid JSON"))
  return [Case("0 bytes", b"", expect)]


def bomb_cases(key: str) -> list[Case]:
  if key != "image":
    return []
  return [
      Case("PNG declaring 50,000 x 50,000 px", png_bomb(), Error("decompression bomb")),
      Case("PNG declaring 2**31-1 x 1 px", png_bomb(2**31 - 1, 1), Error("decompression bomb")),
  ]


def count_field_cases(key: str) -> list[Case]:
  bad = {"NaN": NAN, "inf": INF, "-3": -3.0, "1e12": 1e12, "2.5": 2.5}
  if key == "shanghaitech":
    cases = [
        Case(f"number = {label}", sht_mat(GOOD, number=v), Error("image_info.number"))
        for label, v in bad.items()
    ]
    cases += [
        Case(
            "number a string", sht_mat(None, info=_info(number="three")), Error("image_info.number")
        ),
        Case(
            "number empty", sht_mat(None, info=_info(number=np.zeros((0, 0)))), Error("one number")
        ),
        Case("number 1x2", sht_mat(None, info=_info(number=np.ones((1, 2)))), Error("one number")),
        Case("number = 7 (disagrees: logged)", sht_mat(GOOD, number=7), Count(3)),
    ]
    return cases
  if key == "nwpu_json":
    cases = [
        Case(f"human_num = {label}", nwpu_json(GOOD, human_num=v), Error("human_num"))
        for label, v in bad.items()
    ]
    cases += [
        Case("human_num = 10**30", nwpu_json(GOOD, human_num=10**30), Error("human_num")),
        Case("human_num a string", nwpu_json(GOOD, human_num="3"), Error("human_num")),
        Case("human_num true", nwpu_json(GOOD, human_num=True), Error("human_num")),
        Case(
            "human_num null",
            nwpu_json(GOOD, human_num=None).replace(b'"human_num": 3', b'"human_num": null'),
            Error("human_num"),
        ),
        Case("human_num = 7 (disagrees: logged)", nwpu_json(GOOD, human_num=7), Count(3)),
    ]
    return cases
  if key == "jhu_labels":
    return [
        Case(f"count = {text}", f"0001,{text},street,0,0\n".encode(), Error("line 1"))
        for text in ("nan", "inf", "-3", "99999999999", "2.5", "", "three")
    ] + [Case("weather = 1e12", b"0001,3,street,1000000000000,0\n", Error("line 1"))]
  if key == "nwpu_list":
    return [
        Case(f"label = {text}", f"0001 {text} 2\n".encode(), Error("line 1"))
        for text in ("nan", "1.5", "99999999999", "x")
    ]
  return []


def attribute_cases(key: str) -> list[Case]:
  if key == "jhu_gt":
    return [
        Case(f"{name} = {value}", f"1 2 {line}\n".encode(), Error("line 1: w and h must fit"))
        for name, value, line in [
            ("w", "1e39 (beyond float32)", "1e39 5 1 0"),
            ("occlusion", "nan", "4 5 nan 0"),
            ("occlusion", "1.5", "4 5 1.5 0"),
            ("blur", "inf", "4 5 1 inf"),
            ("blur", "1e12", "4 5 1 1e12"),
        ]
    ] + [  # head sizes are stored as annotated, NaN included; the head itself is valid
        Case("w = nan (stored as annotated)", b"1 2 nan 5 1 0\n", Count(1)),
        Case("h = inf (stored as annotated)", b"1 2 4 inf 1 0\n", Count(1)),
    ]
  if key == "nwpu_json":
    return [
        Case(label, nwpu_json(GOOD, boxes=boxes), Error("'boxes'"))
        for label, boxes in [
            ("boxes N x 3", [[1, 2, 3]] * 3),
            ("boxes flattened", [1, 2, 3, 4, 5, 6, 7, 8]),
            ("boxes strings", [["1", "2", "3", "4"]]),
            ("boxes ragged", [[1, 2, 3, 4], [1, 2]]),
            ("a box at 1e39 (beyond float32)", [[1, 2, 1e39, 4]]),
        ]
    ] + [
        Case("boxes empty", nwpu_json(GOOD, boxes=[]), Count(3)),
        Case(
            "a box with NaN (stored as annotated)",
            nwpu_json(GOOD, boxes=[[1, 2, NAN, 4]]),
            Count(3),
        ),
    ]
  return []


DAMAGE: dict[str, Callable[[str], list[Case]]] = {
    "random bytes": random_cases,
    "truncated": truncated_cases,
    "wrong or missing keys": lambda key: WRONG_KEYS.get(key, []),
    "NaN / inf coordinates": lambda key: nonfinite_cases(key) if key in POINT_FORMATS else [],
    "negative coordinates": lambda key: negative_cases(key) if key in POINT_FORMATS else [],
    "huge coordinates": lambda key: huge_cases(key) if key in POINT_FORMATS else [],
    "empty point list": lambda key: empty_list_cases(key) if key in POINT_FORMATS else [],
    "wrong shapes": lambda key: shape_cases(key) if key in POINT_FORMATS else [],
    "non-numeric entries": lambda key: nonnumeric_cases(key) if key in POINT_FORMATS else [],
    "empty file": empty_file_cases,
    "damaged count field": count_field_cases,
    "damaged per-head attributes": attribute_cases,
    "decompression bomb": bomb_cases,
}
COMBINATIONS = [(key, damage) for key in FORMATS for damage, cases in DAMAGE.items() if cases(key)]


@pytest.mark.parametrize("key, damage", COMBINATIONS)
def test_damaged_annotation_is_an_error_naming_the_file_or_a_counted_drop(key, damage):
  fmt = FORMATS[key]
  assert check(fmt, Case("undamaged", fmt.valid, ErrorOrSame())) == "same as undamaged"
  for case in DAMAGE[damage](key):
    check(fmt, case)


# Every single-bit flip of a .mat file, in a child process (scipy crashed on some) -------

_FLIP_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    from tfds_crowd import shanghaitech, ucf_cc_50
    from tfds_crowd.crowd_builder import CrowdDataError
    parse = {"shanghaitech": lambda d, w: shanghaitech.parse_ground_truth(d, w)[0],
             "ucf_cc_50": ucf_cc_50.parse_annotation}
    summary = {}
    for name, key, path in json.loads(sys.argv[1]):
      full = open(path, "rb").read()
      reference = len(parse[key](full, name))
      errors = same = 0
      for pos in range(len(full)):
        for bit in range(8):
          data = bytearray(full)
          data[pos] ^= 1 << bit
          print(name, pos, bit, flush=True)
          try:
            points = parse[key](bytes(data), name)
          except CrowdDataError as error:
            assert str(error).startswith(name) and len(str(error)) > len(name) + 15, error
            errors += 1
            continue
          assert len(points) == reference, (name, pos, bit, len(points), reference)
          same += 1
      summary[name] = {"flips": errors + same, "errors": errors, "same count": same}
    print("SUMMARY", json.dumps(summary))
    """)


def flip_files(tmp_path: Path) -> list[tuple[str, str, str]]:
  """(name, format, path) of the .mat files to flip every bit of."""
  files = {
      "ShanghaiTech GT_IMG_1.mat": ("shanghaitech", sht_mat(GOOD)),
      "ShanghaiTech GT_IMG_2.mat, compressed": ("shanghaitech", sht_mat(GOOD, compress=True)),
      "UCF_CC_50 1_ann.mat": ("ucf_cc_50", ucf_mat(np.float64(GOOD))),
      "UCF_CC_50 2_ann.mat, compressed": ("ucf_cc_50", ucf_mat(np.float64(GOOD), compress=True)),
  }
  rows = []
  for name, (key, data) in files.items():
    path = tmp_path / name.split()[1].rstrip(",")
    path.write_bytes(data)
    rows.append((name, key, str(path)))
  real = SHARED_DATA / "sht_sample" / "ground-truth" / "GT_IMG_3.mat"
  if real.is_file():  # a real ShanghaiTech file (MATLAB-written, compressed)
    rows.append(("ShanghaiTech real sht_sample/GT_IMG_3.mat", "shanghaitech", str(real)))
  return rows


def run_flips(tmp_path: Path) -> dict:
  result = subprocess.run(
      [sys.executable, "-c", _FLIP_SCRIPT, json.dumps(flip_files(tmp_path))],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  lines = result.stdout.strip().splitlines()
  assert result.returncode == 0 and lines and lines[-1].startswith("SUMMARY"), (
      f"child exited with {result.returncode} after flip {lines[-1:] or '(none)'}:\n"
      f"{result.stderr[-3000:]}"
  )
  return json.loads(lines[-1].removeprefix("SUMMARY "))


def test_every_bit_flip_of_a_mat_file_is_an_error_naming_it_or_keeps_the_count(tmp_path):
  """A flipped type code used to crash scipy's reader (segmentation fault); now every
  flip is a clear error or leaves the number of points unchanged (a flipped coordinate
  bit can move a point: MAT v5 has no checksum outside compressed variables; one that
  becomes NaN or leaves the image is dropped and counted)."""
  summary = run_flips(tmp_path)
  assert all(row["flips"] > 1000 for row in summary.values()), summary
  assert all(row["errors"] > 0 and row["same count"] > 0 for row in summary.values()), summary


# Damaged zip archives (the datasets are distributed zipped) -----------------------------

ZIP_MEMBERS = {f"jsons/000{k}.json": b'{"points": [[1, 2]], "human_num": 1}' for k in (1, 2)}


def zipped(members: dict[str, bytes]) -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return buffer.getvalue()


def zip_outcome(root: Path, data: bytes) -> str:
  """What `ManualSource` makes of jsons.zip holding `data`: "error" (a `CrowdDataError`
  naming the archive), "same" (every member intact) or "member missing" (the builders
  then stop, naming the image without its annotation, see
  `test_image_or_annotation_lost_from_an_archive_is_an_error`)."""
  (root / "jsons.zip").write_bytes(data)
  try:
    source = ManualSource(root)
    members = {name: source.read_bytes(name) for name, _ in source.match(r"^jsons/")}
  except CrowdDataError as error:
    assert str(error).startswith(str(root / "jsons.zip")), error
    assert len(str(error)) > len(str(root / "jsons.zip")) + 15, error
    return "error"
  if members == ZIP_MEMBERS:
    return "same"
  assert set(members) < set(ZIP_MEMBERS), sorted(members)
  assert all(members[name] == ZIP_MEMBERS[name] for name in members)
  return "member missing"


def zip_cases() -> dict[str, list[bytes]]:
  full = zipped(ZIP_MEMBERS)
  flips = []
  for position in range(len(full)):  # (every bit would be 8x the file writes: slow disks)
    data = bytearray(full)
    data[position] ^= 1 << position % 8
    flips.append(bytes(data))
  return {
      "random bytes": [random_bytes(seed) for seed in range(8)],
      "truncated": [full[:cut] for cut in range(0, len(full))],
      "a bit flipped in each byte": flips,
  }


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "a bit flipped in each byte"])
def test_damaged_zip_archive_is_an_error_naming_it(tmp_path, damage):
  outcomes = collections.Counter(zip_outcome(tmp_path, data) for data in zip_cases()[damage])
  assert outcomes["error"] > 0, outcomes
  if damage != "a bit flipped in each byte":
    assert set(outcomes) == {"error"}, outcomes


def test_image_or_annotation_lost_from_an_archive_is_an_error(tmp_path):
  """An image missing beside its annotation (a damaged images zip, say) stops the build
  naming the annotation: its heads must not vanish with the image."""
  folder = tmp_path / "sht" / "part_A" / "train_data"
  for k in (1, 2):
    (folder / "ground-truth").mkdir(parents=True, exist_ok=True)
    (folder / "ground-truth" / f"GT_IMG_{k}.mat").write_bytes(sht_mat(GOOD))
  write_jpeg(folder / "images" / "IMG_1.jpg")
  builder = shanghaitech.Shanghaitech(config="part_a", data_dir=str(tmp_path / "data"))
  with pytest.raises(CrowdDataError, match=r"GT_IMG_2\.mat: no image IMG_2\.jpg"):
    dict(builder._generate_examples(ManualSource(tmp_path / "sht"), "A", "train"))
  split = tmp_path / "jhu" / "train"
  (split / "gt").mkdir(parents=True)
  for k in (1, 2):
    (split / "gt" / f"000{k}.txt").write_bytes(jhu_lines(GOOD))
  write_jpeg(split / "images" / "0001.jpg")
  (split / "image_labels.txt").write_text("0001,3,street,0,0\n0002,3,street,0,0\n")
  builder = jhu_crowd.JhuCrowd(data_dir=str(tmp_path / "data"))
  with pytest.raises(CrowdDataError, match=r"gt/0002\.txt: no image train/images/0002\.jpg"):
    dict(builder._generate_examples(ManualSource(tmp_path / "jhu"), "train"))
  root = tmp_path / "nwpu"
  write_jpeg(root / "images" / "0001.jpg")
  source = ManualSource(root)
  builder = nwpu_crowd.NwpuCrowd(data_dir=str(tmp_path / "data"))
  images = {m[1]: name for name, m in source.match(nwpu_crowd._IMAGE)}
  with pytest.raises(CrowdDataError, match=r"images/0001\.jpg: no annotation jsons/0001\.json"):
    dict(builder._generate_examples(source, "train", {"0001": [1, 2]}, images, {}))
  # (UCF_CC_50 requires all 50 k.jpg and names the first k_ann.mat missing.)


# Through the builders: logs, per-example counts, the split summary ---------------------


def write_jpeg(path: Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(jpeg(HEIGHT, WIDTH))


DAMAGED = GOOD + [[NAN, 5.0], [1e12, 5.0], [-5.0, 3.0], [-0.5, 3.0]]  # 4 kept, 3 dropped


def shanghaitech_examples(root: Path, tmp_path: Path):
  folder = root / "part_A" / "train_data"
  for k, (points, number) in {1: (DAMAGED, len(DAMAGED)), 2: ([], 4)}.items():
    write_jpeg(folder / "images" / f"IMG_{k}.jpg")
    (folder / "ground-truth").mkdir(parents=True, exist_ok=True)
    (folder / "ground-truth" / f"GT_IMG_{k}.mat").write_bytes(sht_mat(points, number=number))
  builder = shanghaitech.Shanghaitech(config="part_a", data_dir=str(tmp_path / "data"))
  return builder._generate_examples(ManualSource(root), "A", "train"), "GT_IMG_{}.mat"


def ucf_examples(root: Path, tmp_path: Path):
  for k, points in {1: DAMAGED, 2: []}.items():
    write_jpeg(root / f"{k}.jpg")
    (root / f"{k}_ann.mat").write_bytes(ucf_mat(np.float64(points).reshape(-1, 2)))
  source = ManualSource(root)
  images = {int(m[1]): name for name, m in source.match(ucf_cc_50._IMAGE)}
  annotations = {int(m[1]): name for name, m in source.match(ucf_cc_50._ANNOTATION)}
  builder = ucf_cc_50.UcfCc50(data_dir=str(tmp_path / "data"))
  return builder._generate_examples(source, "fold1", images, annotations, [1, 2]), "{}_ann.mat"


def jhu_examples(root: Path, tmp_path: Path):
  split = root / "train"
  for k, points in {1: DAMAGED, 2: []}.items():
    write_jpeg(split / "images" / f"000{k}.jpg")
    (split / "gt").mkdir(parents=True, exist_ok=True)
    (split / "gt" / f"000{k}.txt").write_bytes(jhu_lines(points))
  (split / "image_labels.txt").write_text("0001,7,street,0,0\n0002,4,street,0,1\n")
  builder = jhu_crowd.JhuCrowd(data_dir=str(tmp_path / "data"))
  return builder._generate_examples(ManualSource(root), "train"), "gt/000{}.txt"


def nwpu_examples(root: Path, tmp_path: Path):
  for k, (points, number) in {1: (DAMAGED, len(DAMAGED)), 2: ([], 4)}.items():
    write_jpeg(root / "images" / f"000{k}.jpg")
    (root / "jsons").mkdir(parents=True, exist_ok=True)
    (root / "jsons" / f"000{k}.json").write_bytes(nwpu_json(points, human_num=number))
  source = ManualSource(root)
  images = {m[1]: name for name, m in source.match(nwpu_crowd._IMAGE)}
  annotations = {m[1]: name for name, m in source.match(nwpu_crowd._ANNOTATION)}
  builder = nwpu_crowd.NwpuCrowd(data_dir=str(tmp_path / "data"))
  entries = {"0001": [1, 2], "0002": [0, 1]}
  return (
      builder._generate_examples(source, "train", entries, images, annotations),
      "jsons/000{}.json",
  )


@pytest.mark.parametrize(
    "make",
    [shanghaitech_examples, ucf_examples, jhu_examples, nwpu_examples],
    ids=lambda f: f.__name__,
)
def test_generate_logs_and_counts_every_drop(tmp_path, caplog, make):
  """Image 1: 7 annotated points, 1 NaN, 2 outside (x = 1e12, x = -5) dropped, 1 moved
  from x = -0.5 onto the border. Image 2: no heads, and a count field of 4 (JHU: 7 and 4
  against 7 and 0 points) that disagrees. Every drop is in the example, logged naming the
  annotation file, and in the split summary."""
  caplog.set_level(logging.INFO, logger="absl")
  generator, annotation = make(tmp_path / "manual", tmp_path)
  examples = dict(generator)
  first, second = (examples[k] for k in sorted(examples))
  np.testing.assert_array_equal(first["points"], np.float32(GOOD + [[0.0, 3.0]]))
  assert (first["count"], first["dropped_points"], first["clipped_points"]) == (4, 3, 1)
  assert (second["count"], second["dropped_points"], second["points"].shape) == (0, 0, (0, 2))
  log = caplog.text
  assert f"{annotation.format(1)}): dropped 3 of 7 head points: 2 more than 1 px outside" in log
  assert "1 with NaN or infinite coordinates" in log
  assert f"{annotation.format(1)}): moved 1 head points" in log
  if "annotated_count" in second:  # UCF_CC_50 has no count field
    assert second["annotated_count"] == 4
    assert f"{annotation.format(2)}: the annotation's count field says 4 but it lists 0" in log
    mismatches = 1
  else:
    mismatches = 0
  assert (
      "2 images, 4 head points kept (1 moved onto the border), 3 points dropped (2 outside "
      "their image, 1 with NaN or infinite coordinates; from 1 images), "
      f"{mismatches} images whose count field disagrees"
  ) in log


def test_truncated_jhu_gt_at_a_line_end_is_a_logged_count_mismatch(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  split = tmp_path / "manual" / "train"
  write_jpeg(split / "images" / "0001.jpg")
  (split / "gt").mkdir(parents=True)
  (split / "gt" / "0001.txt").write_bytes(jhu_lines(GOOD)[: jhu_lines(GOOD).index(b"\n") + 1])
  (split / "image_labels.txt").write_text("0001,3,street,0,0\n")
  builder = jhu_crowd.JhuCrowd(data_dir=str(tmp_path / "data"))
  (example,) = dict(builder._generate_examples(ManualSource(tmp_path / "manual"), "train")).values()
  assert (example["count"], example["annotated_count"]) == (1, 3)
  assert "gt/0001.txt: the annotation's count field says 3 but it lists 1 points." in caplog.text
  assert "1 images whose count field disagrees" in caplog.text


def test_missing_image_labels_line_is_an_error_naming_the_file(tmp_path):
  split = tmp_path / "manual" / "train"
  write_jpeg(split / "images" / "0001.jpg")
  (split / "gt").mkdir(parents=True)
  (split / "gt" / "0001.txt").write_bytes(jhu_lines(GOOD))
  (split / "image_labels.txt").write_bytes(b"")
  builder = jhu_crowd.JhuCrowd(data_dir=str(tmp_path / "data"))
  with pytest.raises(CrowdDataError, match=r"image_labels\.txt: no line for image 0001"):
    dict(builder._generate_examples(ManualSource(tmp_path / "manual"), "train"))


# Full TFDS builds with one damaged annotation ------------------------------------------


def test_full_build_names_a_mat_file_that_used_to_crash_scipy(tmp_path):
  """ShanghaiTech with one GT file whose coordinates' type code has a flipped bit (9,
  miDOUBLE, became 8, a code scipy has no dtype for): scipy 1.17 dies with a segmentation
  fault on it; the build now stops naming the file."""
  from tfds_crowd.build import build

  good = sht_mat(GOOD)
  location_tag = good.index(np.float64(GOOD).T.tobytes()) - 8
  assert good[location_tag] == 9  # miDOUBLE
  damaged = bytearray(good)
  damaged[location_tag] ^= 1
  for split in ("train", "test"):
    folder = tmp_path / "manual" / "part_A" / f"{split}_data"
    write_jpeg(folder / "images" / "IMG_1.jpg")
    (folder / "ground-truth").mkdir(parents=True)
    (folder / "ground-truth" / "GT_IMG_1.mat").write_bytes(
        bytes(damaged) if split == "test" else good
    )
  with pytest.raises(
      CrowdDataError,
      match=r"test_data/ground-truth/GT_IMG_1\.mat: damaged or unusable MATLAB file: numbers "
      r"of unknown data type 8",
  ):
    build("shanghaitech/part_a", str(tmp_path / "data"), str(tmp_path / "manual"))


def test_full_build_names_a_json_with_an_infinite_count(tmp_path, caplog):
  """NWPU-Crowd with `"human_num": Infinity` in one json (it was a bare OverflowError).
  The split lists, shorter than NWPU's (a truncated list would be), are logged."""
  from tfds_crowd.build import build

  manual = tmp_path / "manual"
  for image_id in ("0001", "0002", "0003"):
    write_jpeg(manual / "images" / f"{image_id}.jpg")
    (manual / "jsons").mkdir(exist_ok=True)
    (manual / "jsons" / f"{image_id}.json").write_bytes(nwpu_json(GOOD))
  (manual / "jsons" / "0002.json").write_bytes(nwpu_json(GOOD, human_num=INF))
  (manual / "train.txt").write_text("0001 1 2\n0002 0 1\n")
  (manual / "val.txt").write_text("0003 0 1\n")
  (manual / "test.txt").write_text("0003 0 1\n")
  with pytest.raises(CrowdDataError, match=r"jsons/0002\.json: human_num must be a whole number"):
    build("nwpu_crowd", str(tmp_path / "data"), str(manual))
  assert "train.txt lists 2 images; NWPU-Crowd's train split has 3109" in caplog.text


def test_full_build_keeps_counts_exact_with_nan_and_huge_points(tmp_path):
  """JHU-Crowd++ built with NaN, huge and negative heads in one gt file: stored counts are
  exactly the valid heads, and the drops are stored per example."""
  from tfds_crowd.build import build

  root = tmp_path / "manual" / "jhu_crowd_v2.0"
  for split in ("train", "val", "test"):
    write_jpeg(root / split / "images" / "0001.jpg")
    (root / split / "gt").mkdir(parents=True)
    (root / split / "gt" / "0001.txt").write_bytes(jhu_lines(DAMAGED if split == "train" else GOOD))
    (root / split / "image_labels.txt").write_text(
        f"0001,{7 if split == 'train' else 3},street,0,0\n"
    )
  builder = build("jhu_crowd", str(tmp_path / "data"), str(tmp_path / "manual"))
  (example,) = builder.as_data_source(split="train")
  assert (example["count"], example["dropped_points"], example["clipped_points"]) == (4, 3, 1)
  assert example["occlusion"].shape == (4,)
  (example,) = builder.as_data_source(split="val")
  assert (example["count"], example["dropped_points"]) == (3, 0)


# The table of every case --------------------------------------------------------------


def table(tmp_path: Path) -> str:
  """Markdown: format x damage class -> cases tried, outcomes (each checked)."""
  rows = ["| annotation file | damage | cases | outcome |", "|---|---|---:|---|"]
  for key, damage in COMBINATIONS:
    fmt = FORMATS[key]
    outcomes = collections.Counter()
    samples = {}
    cases = DAMAGE[damage](key)
    for case in cases:
      said = check(fmt, case)
      kind = said.split(":")[0] if said.startswith("error") else said
      outcomes[kind] += 1
      samples.setdefault(kind, (case.label, said))
    parts = []
    for kind, n in outcomes.most_common():
      label, said = samples[kind]
      if kind == "error":
        parts.append(f'{n} error naming the file, e.g. {label}: "{said[7:]}"')
      else:
        parts.append(f"{n} {said}" if len(outcomes) > 1 else said)
    rows.append(f"| {fmt.title} | {damage} | {len(cases)} | {'; '.join(parts)} |")
  for damage, cases in zip_cases().items():
    outcomes = collections.Counter(zip_outcome(tmp_path, data) for data in cases)
    said = {
        "error": "error naming the archive",
        "same": "every member intact",
        "member missing": "a member missing from the listing (the build then names the image "
        "without its annotation)",
    }
    rows.append(
        f"| NWPU-Crowd jsons.zip (any zip) | {damage} | {len(cases)} | "
        + "; ".join(f"{n} {said[kind]}" for kind, n in outcomes.most_common())
        + " |"
    )
  summary = run_flips(tmp_path)
  for name, row in summary.items():
    rows.append(
        f"| {name} | every single-bit flip | {row['flips']} | {row['errors']} error naming "
        f"the file; {row['same count']} same number of points (no crash) |"
    )
  return "\n".join(rows)


if __name__ == "__main__":
  import tempfile

  with tempfile.TemporaryDirectory() as folder:
    print(table(Path(folder)))
