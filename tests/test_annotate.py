"""The annotation mode of the counting page (`launch.py --mode serve --annotate DIR`): its
HTTP routes, what it refuses, the token, and a person's session in a real browser whose
result the folder importer reads."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.serve_load import send_raw
from benchmarks.serve_screenshot import CHROMIUM_FLAGS
from cfrnet_jax.inference.annotate import MAX_SAVE_BYTES, AnnotationService
from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.serve import (
    DEFAULT_QUEUE_SIZE,
    CountingService,
    RequestError,
    is_loopback,
    make_server,
    resolve_token,
)
from configs import tiny
from tests.conftest import serving, shared_data
from tests.test_serve import chromium, playwright_api

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
POINT_THRESHOLD = 0.01  # about 1,000 proposals on IMG_1


@pytest.fixture(scope="module")
def counter():
  config = tiny.get_config()
  config.predict.point_threshold = 0.0  # an untrained model's peaks are heads too
  return CrowdCounter.from_config(config, seed=2)


def picture_bytes(size, seed=0, orientation=None) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
  encoded = io.BytesIO()
  image = Image.fromarray(pixels)
  if orientation is None:
    image.save(encoded, "JPEG")
  else:
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(encoded, "JPEG", exif=exif)
  return encoded.getvalue()


@pytest.fixture
def folder(tmp_path):
  """A folder to annotate (two pictures, one in a subfolder, one turned by EXIF), and a
  folder beside it that must never be written."""
  root = tmp_path / "pictures"
  (root / "sub").mkdir(parents=True)
  (root / "a.jpg").write_bytes(picture_bytes((96, 64)))
  (root / "sub" / "turned.jpg").write_bytes(picture_bytes((80, 48), 1, orientation=6))
  (root / "notes.txt").write_text("not a picture")
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "secret.jpg").write_bytes(picture_bytes((32, 32), 2))
  (outside / "victim.json").write_text('{"keep": true}')
  return root


class Client:
  """A server for `folder` on a free port, and requests to it."""

  def __init__(self, counter, folder, token=None, label="head", queue_size=DEFAULT_QUEUE_SIZE):
    self.annotation = AnnotationService(counter, folder, label)
    service = CountingService(counter, max_upload_mb=1, queue_size=queue_size)
    self.server = make_server(service, port=0, token=token, annotation=self.annotation)
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

  def request(self, path, data=None, headers=None, method=None):
    request = urllib.request.Request(
        self.base + path, data=data, headers=headers or {}, method=method
    )
    try:
      with urllib.request.urlopen(request, timeout=120) as response:
        body = response.read()
        return response.status, body, response.headers
    except urllib.error.HTTPError as error:
      return error.code, error.read(), error.headers

  def json(self, path, data=None, headers=None):
    status, body, _ = self.request(path, data, headers)
    return status, json.loads(body)

  def save(self, name, points, headers=None, raw=None):
    data = raw if raw is not None else json.dumps({"points": points}).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    return self.json(f"/api/annotation?name={urllib.request.quote(name)}", data, headers)

  def close(self):
    self.server.shutdown()
    self.server.server_close()


@pytest.fixture
def client(counter, folder):
  client = Client(counter, folder)
  yield client
  client.close()


def tree(root: Path) -> dict:
  """{relative path: bytes} of every file under `root`'s parent (the folder and beside)."""
  return {
      str(p.relative_to(root.parent)): p.read_bytes() if not p.is_symlink() else os.readlink(p)
      for p in sorted(root.parent.rglob("*"))
      if p.is_file() or p.is_symlink()
  }


def test_lists_describes_and_saves_labelme_beside_the_picture(counter, client, folder):
  status, listing = client.json("/api/pictures")
  assert status == 200
  assert [p["name"] for p in listing["pictures"]] == ["a.jpg", "sub/turned.jpg"]
  assert not any(p["done"] for p in listing["pictures"])
  status, info = client.json("/api/picture?name=a.jpg")
  expected = counter.predict(folder / "a.jpg")
  assert status == 200 and (info["width"], info["height"]) == (96, 64)
  assert info["count"] == pytest.approx(expected.count, rel=1e-6)
  assert np.allclose(info["proposals"], expected.points, atol=0.01) and info["saved"] is None
  status, answer = client.save("a.jpg", [[1.5, 2.25], [95.999, 64]])
  assert status == 200 and answer == {
      "name": "a.jpg",
      "saved": "a.json",
      "points": 2,
      "backup": None,
  }
  record = json.loads((folder / "a.json").read_text())
  assert record["imagePath"] == "a.jpg" and record["imageData"] is None
  assert (record["imageWidth"], record["imageHeight"]) == (96, 64)
  assert [s["points"] for s in record["shapes"]] == [[[1.5, 2.25]], [[96.0, 64]]]
  assert {s["label"] for s in record["shapes"]} == {"head"}
  assert {s["shape_type"] for s in record["shapes"]} == {"point"}
  assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "a.json", "notes.txt", "sub"]
  assert client.json("/api/pictures")[1]["pictures"][0]["done"]
  assert client.json("/api/picture?name=a.jpg")[1]["saved"] == [[1.5, 2.25], [96.0, 64.0]]


def test_the_page_and_its_script_are_separate_files_under_a_policy(client):
  status, page, headers = client.request("/")
  assert status == 200 and b'<script src="annotate_page.js"' in page
  assert b"<script>" not in page  # no inline script
  directives = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";"))
  assert directives["script-src"] == "'self'"
  status, script, headers = client.request("/annotate_page.js")
  assert status == 200 and headers["Content-Type"].startswith("text/javascript")
  assert b"localStorage" in script
  status, counting, _ = client.request("/count")
  assert status == 200 and b"Drop pictures here" in counting


def test_exif_turned_picture_is_annotated_as_displayed(client, folder):
  status, info = client.json("/api/picture?name=sub/turned.jpg")
  assert status == 200 and (info["width"], info["height"]) == (48, 80)  # turned 90 degrees
  status, data, headers = client.request("/api/image?name=sub/turned.jpg")
  assert status == 200 and Image.open(io.BytesIO(data)).size == (48, 80)
  assert client.save("sub/turned.jpg", [[47, 79]])[0] == 200
  record = json.loads((folder / "sub" / "turned.json").read_text())
  assert (record["imageWidth"], record["imageHeight"]) == (48, 80)
  assert client.save("sub/turned.jpg", [[79, 47]])[0] == 400  # the stored frame's x


def test_requests_that_lead_outside_the_folder_write_nothing(client, folder):
  outside = folder.parent / "outside"
  os.symlink(outside / "secret.jpg", folder / "linked_out.jpg")
  (folder / "linked_dir").symlink_to(outside, target_is_directory=True)
  # A picture of the folder whose JSON is a link out of it.
  (folder / "b.jpg").write_bytes(picture_bytes((40, 30), 3))
  os.symlink(outside / "victim.json", folder / "b.json")
  annotation = AnnotationService(client.annotation.counter, folder)
  client.annotation.pictures = annotation.pictures  # the folder as listed now
  assert "linked_out.jpg" not in annotation.pictures  # leads outside: not offered
  before = tree(folder)
  for name, status, message in [
      ("../outside/secret.jpg", 400, "'..' leads outside"),
      ("sub/../../outside/secret.jpg", 400, "'..' leads outside"),
      (str(outside / "secret.jpg"), 400, "absolute path"),
      (str(folder / "a.jpg"), 400, "absolute path"),
      ("linked_out.jpg", 404, "not one of the folder's pictures"),
      ("linked_dir/secret.jpg", 404, "not one of the folder's pictures"),
      ("b.jpg", 403, "symbolic link"),
      ("missing.jpg", 404, "not one of the folder's pictures"),
  ]:
    answer = client.save(name, [[1, 1]])
    assert answer[0] == status and message in answer[1]["error"], (name, answer)
    got = client.request("/api/image?name=" + urllib.request.quote(name))[0]
    assert got == (200 if name == "b.jpg" else status), (name, got)  # nothing read outside
  assert tree(folder) == before
  assert json.loads((outside / "victim.json").read_text()) == {"keep": True}


@pytest.mark.parametrize(
    "raw, status, message",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[[1, 2]]", 400, 'must be a JSON object {"points"'),
        (b'{"points": {"x": 1}}', 400, 'must be a JSON object {"points"'),
        (b'{"points": [[1]]}', 400, "Point 0 is [1], not [x, y]"),
        (b'{"points": [[1, 2], [3, "4"]]}', 400, "Point 1 is"),
        (b'{"points": [[1, 2, 3]]}', 400, "Point 0 is"),
        (b'{"points": [[true, 2]]}', 400, "Point 0 is"),
        (b'{"points": [[NaN, 2]]}', 400, "NaN is not a number"),
        (b'{"points": [[1e400, 2]]}', 400, "Point 0 is"),
        (b'{"points": [[-0.5, 2]]}', 400, "outside the 96x64 picture"),
        (b'{"points": [[10, 64.5]]}', 400, "outside the 96x64 picture"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b'{"points": [' + b"[1,1]," * 200_000 + b"[1,1]]}", 413, "at most 200000 are taken"),
        (b'{"points": [[1, 1]]}' + b" " * MAX_SAVE_BYTES, 413, "at most 5 MB"),
    ],
)
def test_malformed_or_oversized_points_are_refused_and_write_nothing(
    client, folder, raw, status, message
):
  before = tree(folder)
  if len(raw) > MAX_SAVE_BYTES:  # the server refuses it unread (the next test); the service:
    with pytest.raises(RequestError, match=re.escape(message)) as error:
      client.annotation.save("a.jpg", raw)
    answer = (error.value.status, {"error": str(error.value)})
  else:
    answer = client.save("a.jpg", None, raw=raw)
  assert answer[0] == status and message in answer[1]["error"], answer
  assert tree(folder) == before


def test_oversized_declared_body_and_wrong_content_type_are_refused_unread(client, folder):
  before = tree(folder)
  status, body, _ = client.request(
      "/api/annotation?name=a.jpg",
      b"{}",
      {"Content-Type": "application/json", "Content-Length": str(MAX_SAVE_BYTES + 1)},
  )
  assert status == 413 and "at most 5 MB" in json.loads(body)["error"]
  status, body, _ = client.request(
      "/api/annotation?name=a.jpg", b'{"points": []}', {"Content-Type": "text/plain"}
  )
  assert status == 415 and "application/json" in json.loads(body)["error"]
  assert tree(folder) == before


@pytest.mark.parametrize(
    "lengths, status",
    [(["+5"], 400), (["1_0"], 400), (["\u00b2"], 400), (["9" * 5000], 400), (["5", "6"], 400),
     ([], 411)],
)  # fmt: skip
def test_the_save_route_takes_only_one_plain_content_length(client, folder, lengths, status):
  """The counting route's rules (`_Handler.declared_length`): ASCII digits, one value,
  few of them, and no chunked body."""
  before = tree(folder)
  head = "".join(f"Content-Length: {value}\r\n" for value in lengths)
  if not lengths:
    head = "Transfer-Encoding: chunked\r\n"
  request = (
      f"POST /api/annotation?name=a.jpg HTTP/1.1\r\nContent-Type: application/json\r\n{head}\r\n"
  ).encode("latin-1")
  answer, headers, body = send_raw(client.server.server_address[1], request + b'{"points": []}')
  assert answer == status and "Content-Length" in body["error"], body
  assert headers["Content-Type"] == "application/json"
  assert tree(folder) == before and client.json("/api/pictures")[0] == 200


def test_proposals_wait_in_the_counting_pages_queue(counter, folder):
  """With `--annotate` both pages share one model queue: while the model is busy and the
  queue full, a proposal gets 503 with Retry-After, and it is computed once free."""
  client = Client(counter, folder, queue_size=0)
  service = client.server.RequestHandlerClass.service
  try:
    assert client.annotation.queue is service.queue and client.annotation._lock is service._lock
    with service.queue.turn():  # the queue's one place (queue_size 0 below) taken
      status, body, headers = client.request("/api/picture?name=a.jpg")
      assert status == 503 and int(headers["Retry-After"]) >= 1, body
      assert "busy" in json.loads(body)["error"]
      status, body, headers = client.request("/api/image?name=sub/turned.jpg")
      assert status == 503 and int(headers["Retry-After"]) >= 1, body
    status, described = client.json("/api/picture?name=a.jpg")
    assert status == 200
    assert described["count"] == pytest.approx(counter.predict(folder / "a.jpg").count, rel=1e-6)
  finally:
    client.close()


def test_a_json_this_page_did_not_write_is_backed_up_first(client, folder):
  theirs = {"shapes": [{"label": "person", "points": [[5, 6]], "shape_type": "point"},
                       {"label": "area", "points": [[0, 0], [9, 9]], "shape_type": "rectangle"}],
            "imagePath": "a.jpg", "imageData": None}  # fmt: skip
  (folder / "a.json").write_text(json.dumps(theirs))
  status, info = client.json("/api/picture?name=a.jpg")
  assert info["saved"] == [[5.0, 6.0]] and "written by another tool" in info["note"]
  status, answer = client.save("a.jpg", [[7, 8]])
  assert status == 200 and re.fullmatch(r"a\.json\.bak-\d{8}-\d{6}", answer["backup"])
  assert json.loads((folder / answer["backup"]).read_text()) == theirs
  assert json.loads((folder / "a.json").read_text())["shapes"][0]["points"] == [[7, 8]]
  status, again = client.save("a.jpg", [[9, 9]])  # now its own file: replaced, no backup
  assert status == 200 and again["backup"] is None
  assert len(list(folder.glob("a.json.bak-*"))) == 1
  # Another tool writes it again at once (within the same second, as a test does): that
  # file gets a backup of its own, the first stays.
  (folder / "a.json").write_text(json.dumps({**theirs, "imagePath": "again.jpg"}))
  status, third = client.save("a.jpg", [[1, 2]])
  assert status == 200 and third["backup"] != answer["backup"]
  if third["backup"].startswith(answer["backup"]):  # the same second: a numbered name
    assert third["backup"] == answer["backup"] + "-1"
  assert json.loads((folder / answer["backup"]).read_text()) == theirs
  assert json.loads((folder / third["backup"]).read_text())["imagePath"] == "again.jpg"


def test_label_flag_names_the_points(counter, folder):
  client = Client(counter, folder, label="person")
  try:
    assert client.save("a.jpg", [[1, 1]])[0] == 200
    assert json.loads((folder / "a.json").read_text())["shapes"][0]["label"] == "person"
  finally:
    client.close()


def test_folders_that_cannot_be_annotated_are_refused_naming_why(counter, tmp_path):
  """An empty folder, and two pictures that would save to one annotation file (LabelMe
  names it after the picture: X.jpg and X.png both save to X.json), are refused before
  the page starts; nothing is written."""
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "notes.txt").write_text("not a picture")
  with pytest.raises(ValueError, match=r"--annotate .*empty: no picture in the folder"):
    AnnotationService(counter, empty, "head")
  shared = tmp_path / "shared"
  (shared / "sub").mkdir(parents=True)
  for name in ("x.jpg", "x.png", "sub/y.jpg"):
    Image.new("RGB", (8, 8)).save(shared / name)
  before = tree(shared)
  with pytest.raises(ValueError, match=r"1 groups .* share one annotation file.*x\.jpg and x\.png"):
    AnnotationService(counter, shared, "head")
  assert tree(shared) == before


def test_token_auto_is_a_fresh_secret():
  tokens = {resolve_token("auto") for _ in range(20)}
  assert len(tokens) == 20 and all(len(token) >= 24 for token in tokens)
  assert resolve_token(None) is None and resolve_token("") is None
  assert resolve_token("mine") == "mine"


def test_every_route_needs_the_token(counter, folder):
  client = Client(counter, folder, token=TOKEN)
  try:
    for path in ("/", "/annotate_page.js", "/api/pictures", "/api/picture?name=a.jpg",
                 "/api/image?name=a.jpg", "/count", "/api/info", "/nothing"):  # fmt: skip
      for headers in ({}, {"X-Token": "wrong"}, {"Cookie": "cfrnet_token=" + TOKEN}):
        status, body, _ = client.request(path, headers=headers)
        assert status == 401 and "needs its token" in json.loads(body)["error"], (path, headers)
    before = tree(folder)
    assert client.save("a.jpg", [[1, 1]])[0] == 401
    assert client.save("a.jpg", [[1, 1]], headers={"X-Token": TOKEN[:-1]})[0] == 401
    assert tree(folder) == before
    assert client.save("a.jpg", [[1, 1]], headers={"X-Token": TOKEN})[0] == 200
    status, _, headers = client.request("/?token=wrong")
    assert status == 401 and headers["Set-Cookie"] is None  # a wrong token is not kept
    status, _, headers = client.request("/?token=" + TOKEN)
    assert status == 200
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, _ = client.request("/annotate_page.js", headers={"Cookie": cookie.split(";")[0]})
    assert status == 200
  finally:
    client.close()


def test_loopback_addresses():
  assert all(map(is_loopback, ["127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost"]))
  assert not any(map(is_loopback, ["0.0.0.0", "", "::", "192.168.1.4", "example.org"]))


@pytest.mark.parametrize("extra", [[], ["--annotate=."]])
def test_non_loopback_host_without_token_exits_2(tmp_path, extra):
  result = subprocess.run(
      [sys.executable, "launch.py", "--mode=serve", f"--workdir={tmp_path}", "--host=0.0.0.0"]
      + extra,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert "--host 0.0.0.0 is reachable from other machines" in result.stderr
  assert "needs --token" in result.stderr


# The page in a browser -----------------------------------------------------------------


@pytest.fixture
def annotated_run(trained_workdir, tmp_path):
  """`launch.py --mode serve --annotate` on a copy of sht_sample's pictures with a token
  it makes (`--token=auto`, printed in the URL to open), on a free port, proposing the
  2-step model's peaks above POINT_THRESHOLD (its default threshold keeps none): yields
  (URL with the token, the folder)."""
  folder = tmp_path / "to_annotate"
  shutil.copytree(shared_data("sht_sample") / "images", folder)
  flags = [
      f"--workdir={trained_workdir}",
      f"--annotate={folder}",
      "--token=auto",
      "--config=configs/tiny.py",
      f"--config.predict.point_threshold={POINT_THRESHOLD}",
  ]
  with serving(flags, r"Open (http://127\.0\.0\.1:\d+/\?token=(\S+)) ") as found:
    assert len(found.group(2)) >= 24  # a generated secret, not a word
    yield found.group(1), folder


def loaded(page, name, timeout):
  """Waits until the page shows picture `name` (a selector: the page's policy forbids the
  `eval` that wait_for_function would use)."""
  page.locator(f"body[data-loaded='{name}']").wait_for(state="attached", timeout=timeout)


def screen(page, point):
  """Where picture pixel `point` is on the screen (CSS pixels), by the page's view."""
  view = page.evaluate("annotator.view()")
  box = page.locator("#canvas").bounding_box()
  return (
      box["x"] + view["x"] + point[0] * view["scale"],
      box["y"] + view["y"] + point[1] * view["scale"],
  )


def picture_point(page, x, y, view=None, box=None):
  """The picture pixel at screen position (x, y), by the page's view (or `view`, `box`)."""
  view = view or page.evaluate("annotator.view()")
  box = box or page.locator("#canvas").bounding_box()
  return [(x - box["x"] - view["x"]) / view["scale"], (y - box["y"] - view["y"]) / view["scale"]]


def far_from(points, candidates, distance):
  """The first candidate at least `distance` picture pixels from every point."""
  for candidate in candidates:
    if not len(points) or np.min(np.hypot(*(np.asarray(points) - candidate).T)) >= distance:
      return candidate
  raise AssertionError("no free spot")


@pytest.mark.slow  # about 50 s on 2 CPU cores, most of it the model's proposals
def test_annotating_in_a_browser_and_importing_the_folder(annotated_run, trained_workdir, tmp_path):
  """A person's session, by mouse and keyboard only: accept the proposals of IMG_1, add
  two points, move one, remove one (undo, remove again), zoom and fit, save, go on and
  come back; the saved file holds exactly those points, and the folder importer reads the
  folder (the other pictures are not annotated: dropped and counted) with that count."""
  from tfds_crowd.folder import build_folder

  url, folder = annotated_run
  sync_api = playwright_api()
  config = tiny.get_config()
  config.predict.point_threshold = POINT_THRESHOLD
  counter = CrowdCounter.from_checkpoint(trained_workdir, config=config)
  proposals = counter.predict(folder / "IMG_1.jpg").points
  assert len(proposals) >= 2, "the test needs two proposals to move and remove"
  with sync_api.sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1200, "height": 850})
    page.goto(url)
    assert "token" not in page.url  # taken once, then out of the address bar
    loaded(page, "IMG_1.jpg", 300_000)
    assert np.allclose(page.evaluate("annotator.proposals()"), proposals, atol=0.01)
    assert page.inner_text("#npoints") == "0"
    page.keyboard.press("a")  # accept the proposals
    assert page.inner_text("#npoints") == str(len(proposals))
    expected = [list(p) for p in np.round(proposals, 2)]

    # Two points added where there is none, at whole screen pixels.
    box, view = page.locator("#canvas").bounding_box(), page.evaluate("annotator.view()")
    width, height = Image.open(folder / "IMG_1.jpg").size
    spots = [
        (x, y)
        for y in range(round(box["y"]) + 20, round(box["y"] + box["height"]) - 20, 37)
        for x in range(round(box["x"]) + 20, round(box["x"] + box["width"]) - 20, 41)
        if 5 <= picture_point(page, x, y, view, box)[0] <= width - 5
        and 5 <= picture_point(page, x, y, view, box)[1] <= height - 5
    ]
    spots = [np.array(picture_point(page, x, y, view, box)) for x, y in spots]
    for _ in range(2):
      spot = far_from(expected, spots, 15)
      x, y = screen(page, spot)
      page.mouse.click(round(x), round(y))
      expected.append(picture_point(page, round(x), round(y)))
    assert page.inner_text("#npoints") == str(len(proposals) + 2)

    # Move the first proposal 30 screen pixels across and 20 up or down (towards the
    # middle, to stay on the picture), by dragging it.
    x, y = (round(v) for v in screen(page, expected[0]))
    dx = 30 if x < box["x"] + box["width"] / 2 else -30
    dy = 20 if y < box["y"] + box["height"] / 2 else -20
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx // 2, y + dy // 2, steps=3)
    page.mouse.move(x + dx, y + dy, steps=3)
    page.mouse.up()
    expected[0] = picture_point(page, x + dx, y + dy)

    # Remove the second proposal with Shift+click.
    x, y = screen(page, expected[1])
    page.keyboard.down("Shift")
    page.mouse.click(x, y)
    page.keyboard.up("Shift")
    assert page.inner_text("#npoints") == str(len(expected) - 1)
    page.keyboard.press("z")  # undo brings it back where it was; removed again
    assert page.inner_text("#npoints") == str(len(expected))
    page.keyboard.down("Shift")
    page.mouse.click(x, y)
    page.keyboard.up("Shift")
    del expected[1]
    assert page.inner_text("#npoints") == str(len(expected))
    assert "Unsaved" in page.inner_text("#status")

    # Zoom in and back to the whole picture: the view changes, the points do not.
    fit = page.evaluate("annotator.view()")
    page.keyboard.press("+")
    assert page.evaluate("annotator.view()")["scale"] > fit["scale"]
    page.keyboard.press("f")
    assert page.evaluate("annotator.view()") == fit
    assert page.inner_text("#npoints") == str(len(expected))

    page.keyboard.press("s")
    page.locator("#status", has_text=re.compile("^Saved ")).wait_for(timeout=60_000)
    assert page.locator("#pictures li.done").count() == 1
    page.keyboard.press("n")
    loaded(page, "IMG_2.jpg", 300_000)
    page.keyboard.press("p")
    loaded(page, "IMG_1.jpg", 60_000)
    assert page.inner_text("#npoints") == str(len(expected))
    assert page.inner_text("#status") == "Saved annotation."

    # An unsaved change survives a reload (the token stays with the tab).
    x, y = screen(page, far_from(expected, spots, 15))
    page.mouse.click(round(x), round(y))
    page.reload()
    loaded(page, "IMG_2.jpg", 300_000)
    page.click("#pictures li[data-name='IMG_1.jpg'] button")
    loaded(page, "IMG_1.jpg", 60_000)
    assert page.inner_text("#npoints") == str(len(expected) + 1)
    assert "Unsaved" in page.inner_text("#status")
    browser.close()

  record = json.loads((folder / "IMG_1.json").read_text())
  saved = [shape["points"][0] for shape in record["shapes"]]
  assert len(saved) == len(expected)
  assert np.allclose(saved, expected, atol=0.006)  # saved to 0.01 px
  assert (record["imageWidth"], record["imageHeight"]) == Image.open(folder / "IMG_1.jpg").size
  assert record["imagePath"] == "IMG_1.jpg" and record["imageData"] is None

  built = build_folder(
      str(folder), "annotated_sht", data_dir=str(tmp_path / "data"), format="labelme",
      val_fraction=0, test_fraction=0,
  )  # fmt: skip
  summary = built.summary[-1]
  assert "1 annotated pictures" in summary and "4 pictures without annotations dropped" in summary
  (example,) = list(built.builder.as_data_source(split="train"))
  assert example["filename"].decode().endswith("IMG_1.jpg")
  assert example["count"] == len(expected) == len(example["points"])
