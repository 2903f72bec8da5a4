"""The counting page under load and under attack (`inference/http_limits.py`): each class
of hostile request gets its 4xx with a JSON reason and writes nothing outside the
temporary area, the model's queue answers 503 with Retry-After when full, connections
are bounded, every answer carries the content-security policy, and a short version of
`benchmarks/serve_load.py` (concurrent clients, photos and hostile requests) gets only
right answers from a server that still answers afterwards."""

import base64
import hashlib
import http.client
import io
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.serve_load import (
    escaped_files,
    hostile_requests,
    run_load,
    send_raw,
    summary,
    without_a_200,
)
from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.http_limits import Limits, ModelQueue, page_policy
from cfrnet_jax.inference.serve import CountingService, make_server
from configs import tiny

DEADLINE_S = 1.0
MAX_CONNECTIONS = 6


def jpeg_bytes(size, seed=0) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
  encoded = io.BytesIO()
  Image.fromarray(pixels).save(encoded, "JPEG")
  return encoded.getvalue()


@pytest.fixture(scope="module")
def counter():
  return CrowdCounter.from_config(tiny.get_config(), seed=3)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
  """Where the server's temporary files go in this module (tempfile's folder)."""
  folder = tmp_path_factory.mktemp("uploads")
  before, tempfile.tempdir = tempfile.tempdir, str(folder)
  yield folder
  tempfile.tempdir = before


class Served:
  """A server on a free port of 127.0.0.1 with short deadlines and few connections."""

  def __init__(self, counter, queue_size=1, max_connections=MAX_CONNECTIONS):
    self.service = CountingService(counter, max_upload_mb=0.5, queue_size=queue_size)
    limits = Limits(max_connections=max_connections, header_deadline_s=DEADLINE_S)
    self.server = make_server(self.service, port=0, limits=limits)
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    self.port = self.server.server_address[1]

  def get(self, path, method="GET"):
    return send_raw(self.port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout=60)

  def close(self):
    self.server.shutdown()
    self.server.server_close()


@pytest.fixture(scope="module")
def served(counter, uploads):
  served = Served(counter)
  yield served
  served.close()


@pytest.fixture
def writes(monkeypatch):
  """Every path a file is written to through pathlib during the test."""
  written = []
  original = Path.write_bytes

  def spy(path, data):
    written.append(Path(path).resolve())
    return original(path, data)

  monkeypatch.setattr(Path, "write_bytes", spy)
  return written


PHOTO = jpeg_bytes((80, 60))
HOSTILE = hostile_requests(PHOTO, 500_000)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_each_hostile_class_gets_its_4xx_and_writes_nothing_outside(served, uploads, writes, kind):
  data, how, wanted = HOSTILE[kind]
  began = time.monotonic()
  status, headers, body = send_raw(served.port, data, how, timeout=30)
  assert (status, kind) == (wanted, kind) and isinstance(body["error"], str), body
  assert headers["Content-Type"] == "application/json"
  assert "unsafe-inline" not in headers["Content-Security-Policy"]
  assert headers["X-Content-Type-Options"] == "nosniff"
  if how == "slow":  # answered at the deadline, not when the client gives up
    assert DEADLINE_S <= time.monotonic() - began < DEADLINE_S + 2
  # Only pictures that pass the header checks reach the model, through a temporary copy.
  assert all(uploads in path.parents for path in writes), writes
  assert list(uploads.iterdir()) == [] and escaped_files(uploads.parent) == []
  assert served.get("/api/info")[0] == 200  # and the server still answers


def test_a_body_too_slow_gets_a_408_the_client_reads_while_still_sending(served):
  """Headers at once, then the body one byte every 0.1 s: the 408 comes at the body's
  deadline (from the end of the headers), and the server goes on reading what the client
  sends after it (a closed socket would reset the connection, and a client still
  sending could lose the answer); then the client reads the whole 408."""
  head = f"POST /api/count?name=slow.jpg HTTP/1.1\r\nContent-Length: {len(PHOTO)}\r\n\r\n"
  with socket.create_connection(("127.0.0.1", served.port), timeout=30) as connection:
    connection.sendall(head.encode())
    began = time.monotonic()
    connection.settimeout(0.1)
    for byte in PHOTO:
      connection.sendall(bytes([byte]))
      try:
        if connection.recv(1, socket.MSG_PEEK):
          break
      except TimeoutError:
        continue
    answered_s = time.monotonic() - began
    for _ in range(5):  # still sending, 0.5 s after the answer: the server reads it all
      connection.sendall(PHOTO[:2000])
      time.sleep(0.1)
    connection.settimeout(30)
    answer = http.client.HTTPResponse(connection)
    answer.begin()
    body = json.loads(answer.read())
  assert answer.status == 408 and "too slow" in body["error"], body
  deadline_s = DEADLINE_S + len(PHOTO) / Limits().min_upload_bytes_per_s
  assert deadline_s - 0.05 <= answered_s < deadline_s + 1.0
  assert served.get("/api/info")[0] == 200


def test_a_picture_named_like_a_path_is_refused_whatever_its_bytes(served, writes):
  for name in ("..%2F..%2Fx.jpg", "%2Fetc%2Fx.jpg", "a%00.jpg", "a%5Cb.jpg", "..", "C:x.jpg"):
    request = f"POST /api/count?name={name} HTTP/1.1\r\nContent-Length: {len(PHOTO)}\r\n\r\n"
    status, _, body = send_raw(served.port, request.encode() + PHOTO)
    assert status == 400 and "name" in body["error"], (name, body)
  assert writes == []


@pytest.mark.parametrize("lengths", [["\u00b2"], ["9" * 5000], ["1e3"], ["5, 6"], ["5", "6"], [""]])
def test_content_lengths_that_are_not_one_number_get_400(served, lengths):
  head = "".join(f"Content-Length: {value}\r\n" for value in lengths)
  request = f"POST /api/count?name=a.jpg HTTP/1.1\r\n{head}\r\n".encode("latin-1")
  status, _, body = send_raw(served.port, request + b"12345")
  assert status == 400 and "Content-Length" in body["error"], body
  assert served.get("/api/info")[0] == 200


def test_a_decompression_bomb_is_refused_from_its_header(served):
  bomb = HOSTILE["decompression bomb"][0]
  status, _, body = send_raw(served.port, bomb)
  assert status == 400 and "megapixels" in body["error"] and "bomb.png" in body["error"]


def test_only_the_pages_routes_answer_under_the_policy(served):
  status, headers, _ = served.get("/")
  assert status == 200
  page = Path("cfrnet_jax/inference/serve_page.html").read_bytes()
  assert b'<script src="serve_page.js"' in page and b"<script>" not in page
  policy = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";"))
  assert policy["script-src"] == "'self'" and "unsafe" not in headers["Content-Security-Policy"]
  style = re.search(rb"<style>(.*?)</style>", page, re.S).group(1)
  digest = base64.b64encode(hashlib.sha256(style).digest()).decode()
  assert policy["style-src"] == f"'self' 'sha256-{digest}'"  # exactly the page's own style
  assert page_policy(page.replace(style, style + b" ")) != headers["Content-Security-Policy"]
  for path in ("/count", "/index.html", "/serve_page.js", "/api/info"):
    assert served.get(path)[0] == 200, path
  for path in ("/serve.py", "/../serve.py", "/%2e%2e/launch.py", "/api", "/api/count"):
    assert served.get(path)[0] == 404, path
  for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
    status, headers, _ = served.get("/", method)
    assert status == 405 and headers["Allow"] == "GET, POST", method
  connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
  connection.request("HEAD", "/")
  answer = connection.getresponse()
  assert answer.status == 405 and answer.read() == b""  # a HEAD answer has no body
  connection.close()
  status, _, body = send_raw(served.port, b"HELLO\r\n\r\n")
  assert status == 400 and "error" in body


def test_a_full_queue_answers_503_with_retry_after(counter, uploads):
  """With the model busy (its lock held by the test), three requests take the queue's
  places (one to be counted, two waiting); a fourth gets 503 at once, a non-picture and
  a bomb still their 400, and the three are then counted right."""
  served = Served(counter, queue_size=2)
  request = f"POST /api/count?name=q.jpg HTTP/1.1\r\nContent-Length: {len(PHOTO)}\r\n\r\n"
  answers = []
  try:
    with served.service._lock:
      waiting = [
          threading.Thread(
              target=lambda: answers.append(send_raw(served.port, request.encode() + PHOTO))
          )
          for _ in range(3)
      ]
      for thread in waiting:
        thread.start()
      while served.service.queue._slots._value:  # until the three hold every place
        time.sleep(0.01)
      status, headers, body = send_raw(served.port, request.encode() + PHOTO, timeout=10)
      assert status == 503 and int(headers["Retry-After"]) >= 1, body
      assert "busy" in body["error"] and served.service.queue.refused == 1
      # What the header alone refuses needs no model: 400 at once, even now.
      for kind in ("not a picture", "decompression bomb"):
        assert send_raw(served.port, HOSTILE[kind][0], timeout=10)[0] == 400, kind
    for thread in waiting:
      thread.join(60)
    counted = served.service.counter.predict(_saved(uploads.parent, PHOTO)).count
    assert [a[0] for a in answers] == [200] * 3
    assert all(a[2]["count"] == pytest.approx(counted, rel=1e-6) for a in answers)
  finally:
    served.close()


def _saved(folder: Path, data: bytes) -> Path:
  path = folder / "predict_me.jpg"
  path.write_bytes(data)
  return path


def test_connections_beyond_the_limit_get_503_and_idle_ones_are_closed(counter, uploads):
  served = Served(counter, max_connections=2)
  try:
    idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(2)]
    while served.server._active < 2:
      time.sleep(0.01)
    status, headers, body = served.get("/api/info")
    assert status == 503 and headers["Retry-After"].isdigit() and "busy" in body["error"]
    # The idle ones are closed at the deadline (nothing sent: no answer), freeing places.
    for connection in idle:
      connection.settimeout(DEADLINE_S + 3)
      assert connection.recv(100) == b""
      connection.close()
    while served.server._active:
      time.sleep(0.01)
    assert served.get("/api/info")[0] == 200
  finally:
    served.close()


def test_model_queue_rejects_bad_sizes():
  with pytest.raises(ValueError, match="queue_size"):
    ModelQueue(-1)
  with pytest.raises(ValueError, match="max_connections"):
    Limits(max_connections=0)


def test_short_load_every_answer_right_and_the_server_still_answers(counter, uploads):
  """`benchmarks/serve_load.py`'s clients, short: 4 clients x 6 requests, a queue of 1,
  photos of two sizes and every third request hostile."""
  served = Served(counter, queue_size=1, max_connections=8)
  photos = {"a.jpg": jpeg_bytes((96, 64), 1), "b.jpg": jpeg_bytes((150, 120), 2)}
  expected = {
      name: counter.predict(_saved(uploads.parent, data)).count for name, data in photos.items()
  }
  try:
    records = run_load(served.port, photos, expected, HOSTILE, 4, 6, 3, time_limit_s=120)
    figures = summary(records)
    assert figures["requests"] == 24 and figures["lost"] == 0, figures["lost_examples"]
    assert set(figures["by_status"]) <= {"200", "400", "404", "405", "408", "411", "413", "415",
                                         "431", "503"}  # fmt: skip
    assert without_a_200(records, photos) == []  # each photo counted at least once
    assert served.get("/api/info")[0] == 200
    assert list(uploads.iterdir()) == []
  finally:
    served.close()


def test_every_route_of_the_counting_page_needs_the_token(counter, uploads):
  service = CountingService(counter, max_upload_mb=0.5)
  server = make_server(service, port=0, token="t0ken")
  threading.Thread(target=server.serve_forever, daemon=True).start()
  port = server.server_address[1]
  try:
    for path in ("/", "/count", "/serve_page.js", "/api/info", "/nothing"):
      for headers in ("", "X-Token: wrong\r\n"):
        request = f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode()
        status, answer, body = send_raw(port, request)
        assert status == 401 and "needs its token" in body["error"], (path, headers)
        assert "unsafe-inline" not in answer["Content-Security-Policy"]
      status, _, _ = send_raw(port, f"GET {path} HTTP/1.1\r\nX-Token: t0ken\r\n\r\n".encode())
      assert status == (404 if path == "/nothing" else 200), path
    upload = f"POST /api/count?name=a.jpg HTTP/1.1\r\nContent-Length: {len(PHOTO)}\r\n\r\n"
    assert send_raw(port, upload.encode() + PHOTO)[0] == 401
  finally:
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "flag, message",
    [("--queue_size=-1", "--queue_size must be 0 or more"), ("--max_connections=0", "at least 1")],
)
def test_launch_refuses_bad_bounds(tmp_path, flag, message):
  result = subprocess.run(
      [sys.executable, "launch.py", "--mode=serve", f"--workdir={tmp_path}", flag],
      cwd=Path(__file__).resolve().parents[1],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]
