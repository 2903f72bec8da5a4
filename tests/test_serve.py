"""The counting page (`launch.py --mode serve`): its API, and the page in a real browser."""

import base64
import csv
import http.client
import io
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.serve_screenshot import CHROMIUM_FLAGS
from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.serve import CountingService, RequestError, make_server
from configs import tiny
from tests.conftest import serving, shared_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service():
  config = tiny.get_config()
  config.predict.point_threshold = 0.0  # an untrained model's peaks are heads too
  return CountingService(CrowdCounter.from_config(config, seed=2), max_upload_mb=0.5)


def jpeg_bytes(size, seed=0) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
  encoded = io.BytesIO()
  Image.fromarray(pixels).save(encoded, "JPEG")
  return encoded.getvalue()


def test_counts_an_upload_as_the_counter_counts_the_file(service, tmp_path):
  data = jpeg_bytes((150, 100))
  answer = service.count("crowd.jpg", data, '{"left": [[0, 0], [75, 0], [75, 100], [0, 100]]}')
  path = tmp_path / "crowd.jpg"
  path.write_bytes(data)
  expected = service.counter.predict(path, {"left": [[0, 0], [75, 0], [75, 100], [0, 100]]})
  assert answer["count"] == pytest.approx(expected.count, rel=1e-6)
  assert answer["regions"]["left"] == pytest.approx(expected.regions["left"], rel=1e-6)
  assert (answer["width"], answer["height"]) == (150, 100)
  assert len(answer["points"]) == answer["heads"] == len(expected.points) > 0
  assert np.allclose(answer["points"], expected.points, atol=0.05)
  overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay"].split(",", 1)[1])))
  assert overlay.size == (150, 100)


def test_compiles_once_per_padded_shape_across_requests(service):
  before = service.counter.compilations
  service.count("a.png", jpeg_bytes((100, 90)))
  first = service.counter.compilations
  assert first in (before, before + 1)  # 128 x 128 may have been compiled by another test
  for size in ((120, 128), (64, 30)):  # also padded to 128 x 128: nothing new
    service.count("a.png", jpeg_bytes(size))
  assert service.counter.compilations == first == service.info()["compilations"]
  service.count("wide.png", jpeg_bytes((300, 64)))  # 128 x 384: one more
  assert service.counter.compilations == first + 1


@pytest.mark.parametrize(
    "data, regions, status, message",
    [
        (b"GIF89a not really", None, 400, "is not a picture in a format Pillow reads"),
        (b"", None, 400, "is empty"),
        (b"x" * 600_000, None, 413, "this server takes pictures of at most 0.5 MB"),
        ("picture", "{not json", 400, "not valid JSON"),
        ("picture", '{"far": [[0, 0], [900, 0], [900, 900]]}', 400, "outside"),
    ],
)
def test_bad_uploads_get_a_reason(service, data, regions, status, message):
  data = jpeg_bytes((40, 30)) if data == "picture" else data
  with pytest.raises(RequestError, match=message) as error:
    service.count("upload.jpg", data, regions)
  assert error.value.status == status and "cfrnet_upload_" not in str(error.value)


def test_http_errors_are_json_and_the_server_keeps_serving(service):
  server = make_server(service, port=0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  base = f"http://127.0.0.1:{server.server_address[1]}"

  def post(path, data, headers=None):
    headers = {"Content-Type": "image/jpeg", **(headers or {})}
    request = urllib.request.Request(base + path, data=data, headers=headers)
    try:
      with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
      return error.code, json.loads(error.read())

  try:
    assert server.server_address[0] == "127.0.0.1"
    status, body = post("/api/count?name=huge.jpg", b"x" * 10, {"Content-Length": "900000000"})
    assert status == 413 and "huge.jpg is 900.0 MB" in body["error"]
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=60)
    connection.putrequest("POST", "/api/count?name=negative.jpg")
    connection.putheader("Content-Length", "-5")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400 and "'-5' is not valid" in json.loads(response.read())["error"]
    connection.close()
    # urllib's default type for a body is a form's: refused, as another site's form would be.
    assert (
        post(
            "/api/count?name=f.jpg",
            jpeg_bytes((64, 48)),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )[0]
        == 415
    )
    assert post("/api/count?name=t.txt", b"text")[0] == 400
    assert post("/nothing", b"")[0] == 404
    status, body = post("/api/count?name=ok.jpg", jpeg_bytes((64, 48)))
    assert status == 200 and body["name"] == "ok.jpg"
    with urllib.request.urlopen(base + "/", timeout=10) as page:
      assert b"Drop pictures here" in page.read()
  finally:
    server.shutdown()
    server.server_close()


def missing(message: str):
  """Skips a test whose browser tooling is absent, except in CI, where it must run."""
  if os.environ.get("CI"):
    pytest.fail(message)
  pytest.skip(message)


def chromium() -> str:
  path = shutil.which("chromium")
  if path is None:
    missing("Debian's chromium is not installed (.ci/run installs it).")
  return path


def playwright_api():
  try:
    from playwright import sync_api
  except ImportError:
    missing("playwright is not installed (requirements-dev.txt).")
  return sync_api


@pytest.fixture
def served_run(trained_workdir):
  """`launch.py --mode serve` on the trained run, on a free port, taking pictures of up
  to 1 MB: yields its URL."""
  flags = [f"--workdir={trained_workdir}", "--max_upload_mb=1"]
  with serving(flags, r"Serving the counting page on (http://127\.0\.0\.1:\d+/)") as found:
    yield found.group(1)


def test_page_in_a_browser(served_run, trained_workdir, tmp_path):
  """A person's visit, in headless Chromium: drop a real photo (named with HTML and CSV
  specials), a text file named .jpg and a file over the upload limit, read the count and
  look at the overlay, type a region and count again, draw one, download the table (the
  docs' screenshot: `benchmarks/serve_screenshot.py`)."""
  sync_api = playwright_api()
  photo = tmp_path / 'crowd, "<b>three".jpg'
  shutil.copy(shared_data("sht_sample") / "images" / "IMG_3.jpg", photo)
  fake = tmp_path / "notes.jpg"
  fake.write_text("these are notes, not a picture")
  big = tmp_path / "big.jpg"
  big.write_bytes(b"\xff" * 1_500_000)
  left_half = {"left half": [[0, 0], [512, 0], [512, 768], [0, 768]]}
  expected = CrowdCounter.from_checkpoint(trained_workdir).predict(photo, left_half)
  with sync_api.sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1100, "height": 1400})
    refused = []  # what the content-security policy blocked, as the console reports it
    page.on("console", lambda m: refused.append(m.text) if "Security Policy" in m.text else 0)
    answer = page.goto(served_run)
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe-inline" not in policy
    # The page's own <style>, allowed by its hash, applies; its script (a file) runs.
    assert page.locator("#drop").evaluate("e => getComputedStyle(e).borderStyle") == "dashed"
    page.set_input_files("#files", [str(photo), str(fake), str(big)])
    card = page.locator(".card").first
    count = card.locator(".count")
    count.wait_for(timeout=180_000)
    assert float(count.inner_text()) == pytest.approx(expected.count, abs=0.051)
    error = page.locator(".card.error[data-name='notes.jpg'] .message")
    error.wait_for(timeout=60_000)
    assert "notes.jpg: is not a picture in a format Pillow reads" in error.inner_text()
    too_big = page.locator(".card.error[data-name='big.jpg'] .message")
    too_big.wait_for(timeout=60_000)
    assert too_big.inner_text() == "big.jpg is 1.5 MB; this server takes pictures of at most 1 MB."
    assert page.locator(".card b").count() == 0  # the name is text, not markup
    assert photo.name in card.inner_text()

    # The overlay shown is the picture with the density drawn over it, at its size.
    overlay = card.locator("img.overlay")
    assert overlay.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [1024, 768]
    shown = Image.open(io.BytesIO(base64.b64decode(overlay.get_attribute("src").split(",")[1])))
    difference = np.abs(np.asarray(shown, np.int16) - np.asarray(Image.open(photo), np.int16))
    assert difference.mean() > 5  # the heat map and labels are drawn, not the bare photo

    # A typed region, counted again.
    page.locator("summary").click()
    page.fill("#regions", json.dumps(left_half))
    page.click("#recount")
    regions = card.locator(".regions")
    regions.wait_for(timeout=60_000)
    assert regions.inner_text() == f"Regions: left half: {expected.regions['left half']:.1f}"

    # A drawn region: three clicks on the overlay, in picture pixels.
    card.locator("button.draw").click()
    box = overlay.bounding_box()
    for fx, fy in ((0.1, 0.1), (0.9, 0.1), (0.5, 0.9)):
      page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    card.locator("button.finish").click()
    page.wait_for_function(
        "() => document.querySelector('.card .regions')?.textContent.includes('region 2')",
        timeout=60_000,
    )
    drawn = json.loads(page.input_value("#regions"))["region 2"]
    assert np.allclose(drawn, [[102, 77], [922, 77], [512, 691]], atol=3)

    with page.expect_download() as download:
      page.click("#download")
    rows = list(csv.DictReader(open(download.value.path())))
    assert [row["picture"] for row in rows] == [photo.name]
    assert float(rows[0]["count"]) == pytest.approx(expected.count, abs=0.01)
    assert {"region:left half", "region:region 2"} <= set(rows[0])
    assert refused == []
    browser.close()
