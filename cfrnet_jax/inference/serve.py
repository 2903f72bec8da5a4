"""A web page to count people in pictures: `launch.py --mode serve`.

    python launch.py --mode serve --workdir runs/shha [--port 8000] [--host 127.0.0.1]

One page (`serve_page.html` and its script `serve_page.js`, no framework) where a person
drops one or more pictures and sees, for each, the count, the density overlay with the
head points, and the count of each region drawn on a picture or typed as JSON; the
results table downloads as CSV. Python's standard `http.server` serves it: the page
posts each picture's bytes to `/api/count`, which answers JSON.

Each upload goes through exactly what predict mode does with a file (`CrowdCounter.
predict` on a temporary copy): the same checks of damaged, truncated and oversized
pictures (`predict.max_megapixels`), `data.max_side`, tiles, head points and regions. A
request that cannot be counted gets a JSON error with the reason and status 400 (413 for
an upload over `max_upload_mb`, 415 for a body that is not a picture's type); nothing a
client sends stops the server. One model serves every request, one at a time, with at
most `queue_size` waiting (more are answered 503 with `Retry-After`); connections, slow
clients and http.server's own errors are bounded by `inference/http_limits.py`. Its
forward pass is compiled once per padded input shape (the model pads each side to a
multiple of 128 up to `predict.tile_size`, beyond which pictures run as tiles of that
size), and `/api/info` tells how many shapes have been compiled so far.

It listens on 127.0.0.1 (this machine only) unless `--host` says otherwise; on any other
address `launch.py` refuses to serve without `--token`. With a token (`--token T`, or
`--token auto` for one made by `secrets`), every route needs it: in an `X-Token` header,
the `token` query parameter (the page's first visit, `/?token=T`, which also sets it as a
cookie so that the page's script and pictures load) or that cookie; a wrong or missing
token gets 401, compared in constant time (`hmac.compare_digest`).

`--annotate DIR` adds the annotation page (`inference/annotate.py`): `/` is then that
page, and the counting page moves to `/count`.

Routes (any other path is 404, any other method 405):

  GET  / /index.html /count   the page (under `http_limits.page_policy`: no inline script)
  GET  /serve_page.js         its script
  GET  /api/info              the limits and the number of compiled shapes
  POST /api/count?name=N[&regions=JSON]   count the body: a picture file named N
"""

from __future__ import annotations

import base64
import hmac
import http.cookies
import io
import ipaddress
import json
import secrets
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.http_limits import (
    GuardedHandler,
    GuardedHTTPServer,
    Limits,
    ModelQueue,
    RequestError,
    check_name,
)
from cfrnet_jax.inference.overlay import draw_prediction
from cfrnet_jax.inference.regions import parse_regions
from cfrnet_jax.inference.user_images import IMAGE_SUFFIXES, _without_pillow_guard, check_pixels

PAGE = Path(__file__).with_name("serve_page.html")
SCRIPT = Path(__file__).with_name("serve_page.js")
TOKEN_HEADER = "X-Token"
LOOPBACK_NAMES = ("localhost",)
# The largest picture file taken, in MB, unless `launch.py --max_upload_mb` says
# otherwise: a bound on the bytes one request makes the server read and hold.
DEFAULT_MAX_UPLOAD_MB = 50.0
# Requests that may wait for the model while one is counted, unless `--queue_size` says
# otherwise; one more is answered 503 with Retry-After.
DEFAULT_QUEUE_SIZE = 8
# The body types /api/count takes: a picture's, a file of unknown type, or none given
# (a browser's fetch of a File without a type). Form and text types are refused: they
# are what another site's page can make a browser post here.
_PICTURE_TYPES = ("application/octet-stream",)
# JPEG quality (Pillow's 1-95 scale) of the overlay sent back to the page.
_OVERLAY_JPEG_QUALITY = 90


class CountingService:
  """The server's work, apart from HTTP: counts uploaded picture bytes."""

  def __init__(
      self, counter: CrowdCounter, max_upload_mb: float, queue_size: int = DEFAULT_QUEUE_SIZE
  ):
    if not max_upload_mb > 0:
      raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}.")
    self.counter = counter
    self.max_upload_bytes = int(max_upload_mb * 1e6)
    self.queue = ModelQueue(queue_size)
    self._lock = threading.Lock()  # one picture counted at a time, by the one model.

  def info(self) -> dict:
    predict = self.counter.config.predict
    return {
        "compilations": self.counter.compilations,
        "tile_size": predict.tile_size,
        "max_megapixels": predict.max_megapixels,
        "max_upload_mb": self.max_upload_bytes / 1e6,
        "queue_size": self.queue.size,
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
      # The name is never part of the path: the file is always `picture` in a new folder.
      path = Path(folder) / ("picture" + (suffix if suffix in IMAGE_SUFFIXES else ""))
      path.write_bytes(data)
      self._check_header(name, path, data)
      with self.queue.turn(), self._lock:
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

  def _check_header(self, name: str, path: Path, data: bytes) -> None:
    """Refuses, before the queue, what predict mode refuses from a file's header alone,
    with its message: not a picture Pillow reads, or more than `predict.max_megapixels`
    declared (a decompression bomb). Such a request needs no model; in the queue, a busy
    server would answer it 503 and the client would retry what can never pass."""
    try:
      with _without_pillow_guard(), Image.open(path) as image:  # the header only
        size = image.size
    except UnidentifiedImageError:
      message = f"is not a picture in a format Pillow reads (it starts with {data[:8]!r})."
      raise RequestError(f"{name}: {message}") from None
    except Exception:  # damaged in another way: predict says how, in the queue
      return
    try:
      check_pixels(size, self.counter.config.predict.max_megapixels)
    except ValueError as error:
      raise RequestError(f"{name}: {error}") from None


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


def is_loopback(host: str) -> bool:
  """Whether `host` is an address of this machine only (127.0.0.0/8, ::1, localhost):
  the one case where serving without a token is allowed."""
  if host.lower() in LOOPBACK_NAMES:
    return True
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    return False


def resolve_token(value: str | None) -> str | None:
  """`--token`: None for none, a new random token for "auto", else `value` itself."""
  if value is None or value == "":
    return None
  return secrets.token_urlsafe(18) if value == "auto" else value


class _Handler(GuardedHandler):
  service: CountingService  # set on the subclass `make_server` builds
  token: str | None = None  # every route needs it when set
  server_version = "cfrnet-jax"
  _cookie: str | None = None  # a Set-Cookie value to send with this answer

  def parse_request(self) -> bool:
    """http.server's parsing, then the token check: a request without the right token
    is answered 401 here, before any route sees it. A right token given in the query is
    set as a cookie in the answer; a wrong one never is."""
    if not super().parse_request():
      return False
    self._cookie = None
    if self.token is None:
      return True
    given, in_query = self._given_token()
    if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
      if in_query:
        cookie = http.cookies.SimpleCookie()
        cookie[self._cookie_name()] = given
        cookie[self._cookie_name()].update({"httponly": True, "samesite": "Strict", "path": "/"})
        self._cookie = cookie.output(header="").strip()
      return True
    self.close_connection = True
    why = "a wrong token" if given else "no token"
    message = f"This server needs its token ({why} given): open the URL it printed, /?token=..."
    self.send_json(401, {"error": message})
    return False

  def _given_token(self) -> tuple[str | None, bool]:
    """(the token the request carries: header, query, then cookie, or None; whether it
    came in the query)."""
    if self.headers.get(TOKEN_HEADER):
      return self.headers[TOKEN_HEADER], False
    query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
    if query.get("token"):
      return query["token"][0], True
    cookies = http.cookies.SimpleCookie()
    try:
      cookies.load(self.headers.get("Cookie", ""))
    except http.cookies.CookieError:
      return None, False
    morsel = cookies.get(self._cookie_name())
    return (morsel.value if morsel else None), False

  def _cookie_name(self) -> str:
    return f"cfrnet_token_{self.server.server_address[1]}"  # one per port: per server

  def do_GET(self):  # noqa: N802 - http.server's name
    path = urllib.parse.urlparse(self.path).path
    if path in ("/", "/index.html", "/count"):
      self.send_body(200, PAGE.read_bytes(), "text/html; charset=utf-8")
    elif path == "/serve_page.js":
      self.send_body(200, SCRIPT.read_bytes(), "text/javascript; charset=utf-8")
    elif path == "/api/info":
      self.send_json(200, self.service.info())
    else:
      self.send_json(404, {"error": f"No page at {path}."})

  def do_POST(self):  # noqa: N802
    url = urllib.parse.urlparse(self.path)
    if url.path != "/api/count":
      self.send_json(404, {"error": f"No endpoint at {url.path}."})
      return
    query = urllib.parse.parse_qs(url.query)
    name, data = query.get("name", ["picture"])[0], None
    try:
      check_name(name)
      data = self.read_body(self.declared_length(self.service.max_upload_bytes, name))
      self.send_json(200, self.service.count(name, data, query.get("regions", [None])[0]))
    except RequestError as error:
      if data is None:  # refused before its body was read: the connection cannot go on
        self.close_connection = True
      self.send_json(error.status, {"error": str(error)}, error.headers)
    except Exception as error:  # never a dead server: log it, tell the client
      logging.exception("Counting %r failed.", name)
      self.send_json(500, {"error": f"Counting {name!r} failed: {error!r}"})

  def declared_length(self, limit: int, name: str = "The upload", picture: bool = True) -> int:
    """The body's length from its headers, checked before anything is read: 411 without
    Content-Length (or with a chunked body), 400 for one that is not a number, 413 over
    `limit` bytes; with `picture`, 415 for a form or text type (the annotation's save
    route checks its own type)."""
    declared = self.headers.get_all("Content-Length") or []
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or not declared:
      raise RequestError(f"{name}: send it with a Content-Length (not chunked).", 411)
    value = declared[0].strip()
    # ASCII digits only ("²".isdigit() holds), and few: int() refuses over 4300 digits.
    if len(set(declared)) > 1 or not (value.isascii() and value.isdigit() and len(value) < 19):
      raise RequestError(f"{name}: the Content-Length {', '.join(declared)!r:.80} is not valid.")
    length = int(value)
    kind = self.headers.get_content_type() if self.headers.get("Content-Type") else None
    if picture and kind is not None and not (kind.startswith("image/") or kind in _PICTURE_TYPES):
      raise RequestError(f"{name}: a body of type {kind} is not a picture; send its bytes.", 415)
    if length > limit:
      what = "pictures of " if picture else ""
      raise RequestError(
          f"{name} is {length / 1e6:.1f} MB; this server takes {what}at most "
          f"{limit / 1e6:g} MB.",
          status=413,
      )
    return length

  def end_headers(self):
    if self._cookie:
      self.send_header("Set-Cookie", self._cookie)
      self._cookie = None
    super().end_headers()

  def log_message(self, format, *args):  # noqa: A002 - http.server's signature
    logging.debug("%s " + format, self.address_string(), *args)


def make_server(
    service: CountingService,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    annotation=None,
    limits: Limits | None = None,
) -> GuardedHTTPServer:
  """A server for `service` (port 0: any free port, `server.server_address` says which);
  every route needs `token` when one is given; `annotation` (an
  `annotate.AnnotationService`) adds the annotation page; `limits` bound connections and
  slow clients (`http_limits.Limits()` when None)."""
  base = _Handler
  if annotation is not None:
    from cfrnet_jax.inference.annotate import AnnotationHandler

    base = AnnotationHandler
    annotation.use_model_queue(service.queue, service._lock)  # one model, one queue
  handler = type("Handler", (base,), {"service": service, "token": token, "annotation": annotation})
  return GuardedHTTPServer((host, port), handler, limits)


def serve(
    counter: CrowdCounter,
    host: str,
    port: int,
    max_upload_mb: float,
    token: str | None = None,
    annotation=None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    limits: Limits | None = None,
) -> None:
  """Serves the page until interrupted (Ctrl-C), needing `token` when given, with the
  annotation page when `annotation` is given, `queue_size` requests waiting for the
  model at most. OSError with what to do when the address cannot be taken."""
  service = CountingService(counter, max_upload_mb, queue_size)
  try:
    server = make_server(service, host, port, token, annotation, limits)
  except OSError as error:
    raise OSError(
        f"Cannot listen on {host}:{port} ({error.strerror or error}); pick another --port "
        f"(0: any free one) or --host."
    ) from error
  host, port = server.server_address[:2]
  page = "annotation" if annotation is not None else "counting"
  logging.info("Serving the %s page on http://%s:%d/ (Ctrl-C stops it).", page, host, port)
  logging.info(
      "At most %d pictures wait for the model and %d connections are open at once.",
      queue_size,
      server.limits.max_connections,
  )
  if token is not None:
    shown = f"[{host}]" if ":" in host else host
    logging.info("Open http://%s:%d/?token=%s (every request needs the token).", shown, port, token)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    logging.info("Stopped.")
  finally:
    server.server_close()
