"""A web page to count people in pictures: `launch.py --mode serve`.

    python launch.py --mode serve --workdir runs/shha [--port 8000] [--host 127.0.0.1]

One page (`serve_page.html`, plain HTML and JavaScript, no framework) where a person
drops one or more pictures and sees, for each, the count, the density overlay with the
head points, and the count of each region drawn on a picture or typed as JSON; the
results table downloads as CSV. Python's standard `http.server` serves it: the page
posts each picture's bytes to `/api/count`, which answers JSON.

Each upload goes through exactly what predict mode does with a file (`CrowdCounter.
predict` on a temporary copy): the same checks of damaged, truncated and oversized
pictures (`predict.max_megapixels`), `data.max_side`, tiles, head points and regions. A
request that cannot be counted gets a JSON error with the reason and status 400 (413 for
an upload over `max_upload_mb`); nothing a client sends stops the server. One model
serves every request, one at a time; its forward pass is compiled once per padded input
shape (the model pads each side to a multiple of 128 up to `predict.tile_size`, beyond
which pictures run as tiles of that size), and `/api/info` tells how many shapes have
been compiled so far.

It listens on 127.0.0.1 (this machine only) unless `--host` says otherwise.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
from absl import logging

from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.overlay import draw_prediction
from cfrnet_jax.inference.regions import parse_regions
from cfrnet_jax.inference.user_images import IMAGE_SUFFIXES

PAGE = Path(__file__).with_name("serve_page.html")
# The largest picture file taken, in MB, unless `launch.py --max_upload_mb` says
# otherwise: a bound on the bytes one request makes the server read and hold.
DEFAULT_MAX_UPLOAD_MB = 50.0
# JPEG quality (Pillow's 1-95 scale) of the overlay sent back to the page.
_OVERLAY_JPEG_QUALITY = 90


class RequestError(ValueError):
  """What the client sent cannot be counted; `status` is the HTTP status to answer."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


class CountingService:
  """The server's work, apart from HTTP: counts uploaded picture bytes."""

  def __init__(self, counter: CrowdCounter, max_upload_mb: float):
    if not max_upload_mb > 0:
      raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}.")
    self.counter = counter
    self.max_upload_bytes = int(max_upload_mb * 1e6)
    self._lock = threading.Lock()  # one picture counted at a time, by the one model.

  def info(self) -> dict:
    predict = self.counter.config.predict
    return {
        "compilations": self.counter.compilations,
        "tile_size": predict.tile_size,
        "max_megapixels": predict.max_megapixels,
        "max_upload_mb": self.max_upload_bytes / 1e6,
    }

  def check_size(self, name: str, size: int) -> None:
    """RequestError (413) for an upload of `size` bytes over the limit."""
    if size > self.max_upload_bytes:
      raise RequestError(
          f"{name} is {size / 1e6:.1f} MB; this server takes pictures of at most "
          f"{self.max_upload_bytes / 1e6:g} MB.",
          status=413,
      )

  def count(self, name: str, data: bytes, regions: str | None = None) -> dict:
    """The JSON answer for picture file bytes `data` named `name` and optional regions
    (JSON text: a {name: polygon} dict or a list of {"name", "polygon"}, picture
    pixels). Raises RequestError with the reason when it cannot be counted."""
    self.check_size(name, len(data))
    if not data:
      raise RequestError(f"{name} is empty (0 bytes).")
    parsed = _parse_regions(regions)
    suffix = Path(name).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="cfrnet_upload_") as folder:
      path = Path(folder) / ("picture" + (suffix if suffix in IMAGE_SUFFIXES else ""))
      path.write_bytes(data)
      with self._lock:
        compiled_before, start = self.counter.compilations, time.perf_counter()
        try:
          prediction = self.counter.predict(path, parsed)
        except ValueError as error:
          # The message names the temporary file; the user knows the picture by its name.
          raise RequestError(str(error).replace(str(path), name)) from error
        seconds = time.perf_counter() - start
        if self.counter.compilations > compiled_before:
          logging.info(
              "Compiled the forward pass for a new input shape (%d so far).",
              self.counter.compilations,
          )
    overlay = draw_prediction(prediction, self.counter.config.predict.overlay_max_side)
    encoded = io.BytesIO()
    overlay.save(encoded, "JPEG", quality=_OVERLAY_JPEG_QUALITY)
    height, width = prediction.picture_size
    logging.info("%s: %.1f people (%dx%d, %.2f s).", name, prediction.count, width, height, seconds)
    return {
        "name": name,
        "count": prediction.count,
        "width": width,
        "height": height,
        "tiles": prediction.tiles,
        "heads": len(prediction.points),
        "points": np.round(prediction.points, 1).tolist(),
        "regions": prediction.regions,
        "seconds": seconds,
        "overlay": "data:image/jpeg;base64," + base64.b64encode(encoded.getvalue()).decode(),
    }


def _parse_regions(text: str | None):
  if not text or not text.strip():
    return None
  try:
    spec = json.loads(text)
  except json.JSONDecodeError as error:
    raise RequestError(f"The regions are not valid JSON ({error}).") from error
  try:
    return parse_regions(spec, "the regions")
  except ValueError as error:
    raise RequestError(str(error)) from error


class _Handler(http.server.BaseHTTPRequestHandler):
  service: CountingService  # set on the subclass `make_server` builds
  server_version = "cfrnet-jax"
  timeout = 60  # seconds a client may stall mid-request before its connection is dropped

  def do_GET(self):  # noqa: N802 - http.server's name
    path = urllib.parse.urlparse(self.path).path
    if path in ("/", "/index.html"):
      self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
    elif path == "/api/info":
      self._send_json(200, self.service.info())
    else:
      self._send_json(404, {"error": f"No page at {path}."})

  def do_POST(self):  # noqa: N802
    url = urllib.parse.urlparse(self.path)
    if url.path != "/api/count":
      self._send_json(404, {"error": f"No endpoint at {url.path}."})
      return
    query = urllib.parse.parse_qs(url.query)
    name = query.get("name", ["picture"])[0]
    try:
      length = int(self.headers.get("Content-Length", ""))
    except ValueError:
      length = -1
    if length < 0:
      self.close_connection = True
      self._send_json(411, {"error": "The upload has no valid Content-Length."})
      return
    try:
      self.service.check_size(name, length)
    except RequestError as error:
      # Refused before it is read; the connection closes instead of draining the body.
      self.close_connection = True
      self._send_json(error.status, {"error": str(error)})
      return
    try:
      data = self.rfile.read(length)
      answer = self.service.count(name, data, query.get("regions", [None])[0])
      self._send_json(200, answer)
    except RequestError as error:
      self._send_json(error.status, {"error": str(error)})
    except Exception as error:  # never a dead server: log it, tell the client
      logging.exception("Counting %s failed.", name)
      self._send_json(500, {"error": f"Counting {name} failed: {error!r}"})

  def _send_json(self, status: int, body: dict) -> None:
    self._send(status, json.dumps(body).encode(), "application/json")

  def _send(self, status: int, body: bytes, content_type: str) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, format, *args):  # noqa: A002 - http.server's signature
    logging.debug("%s " + format, self.address_string(), *args)


def make_server(
    service: CountingService, host: str = "127.0.0.1", port: int = 8000
) -> http.server.ThreadingHTTPServer:
  """A server for `service` (port 0: any free port, `server.server_address` says which)."""
  handler = type("Handler", (_Handler,), {"service": service})
  return http.server.ThreadingHTTPServer((host, port), handler)


def serve(counter: CrowdCounter, host: str, port: int, max_upload_mb: float) -> None:
  """Serves the page until interrupted (Ctrl-C). OSError with what to do when the
  address cannot be taken."""
  service = CountingService(counter, max_upload_mb)
  try:
    server = make_server(service, host, port)
  except OSError as error:
    raise OSError(
        f"Cannot listen on {host}:{port} ({error.strerror or error}); pick another --port "
        f"(0: any free one) or --host."
    ) from error
  host, port = server.server_address[:2]
  logging.info("Serving the counting page on http://%s:%d/ (Ctrl-C stops it).", host, port)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    logging.info("Stopped.")
  finally:
    server.server_close()
