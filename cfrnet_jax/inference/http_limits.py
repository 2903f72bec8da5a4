"""What keeps the counting and annotation pages standing under load and under attack.

`serve.make_server` builds a `GuardedHTTPServer` whose handler derives from
`GuardedHandler`; this module holds the limits, apart from the pages' routes:

* connections: at most `Limits.max_connections` at once, each on its own thread; one
  more is answered 503 with `Retry-After` at once and closed, so a flood of clients
  cannot make the server start threads without end;
* slow clients: a request's line and headers must arrive within
  `Limits.header_deadline_s`, and its body, from then, within that plus its length at
  `Limits.min_upload_bytes_per_s`; a client still sending then (a slowloris trickling
  one byte at a time, a body shorter than its Content-Length) is answered 408 and
  disconnected. The headers' deadline is one check in the server's own loop
  (`service_actions`, not a thread per connection), which ends the read of a late
  request; the body's is `GuardedHandler.read_body`'s own (each read's timeout is what
  is left of it), so that its 408 is read by a client still sending. A client that sends
  nothing for `Limits.stall_timeout_s` mid-read is disconnected by the socket's timeout;
  every connection closes after draining what the client still sends (1 s at most), so
  that an answer is not lost to a reset;
* the model's queue: `ModelQueue` lets at most `size` requests wait while one is
  counted; one more is answered 503 with `Retry-After` rather than waiting in a queue
  that grows without end;
* answers: every one is JSON on error (http.server's own errors too: a header line over
  64 KiB or over 100 headers is 431, a request line over 64 KiB 414, an unknown method
  405) and carries a content-security policy: pages may run scripts from this server
  only (no inline script) and styles from this server or their own `<style>` blocks,
  allowed by hash, so no policy holds `unsafe-inline`; `X-Content-Type-Options: nosniff`.

Memory is bounded by these: at most `max_connections` bodies of at most `max_upload_mb`
are held, and at most the queue's requests decode a picture for the model (an answer
being drawn, JPEG-encoded and sent holds its picture too, after its turn in the queue:
at most one per connection).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.server
import json
import math
import re
import socket
import threading
import time

from absl import logging

# Answers that are not pages (JSON, the scripts) load nothing and may not be framed.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
_STYLE_BLOCK = re.compile(rb"<style>(.*?)</style>", re.S)
_CHUNK = 1 << 20  # bytes of a body read at a time
_MAX_NAME = 255  # characters of a picture's name


class RequestError(ValueError):
  """What the client sent cannot be answered; `status` is the HTTP status to answer,
  `headers` any headers the answer must carry (`Retry-After`)."""

  def __init__(self, message: str, status: int = 400, headers: dict | None = None):
    super().__init__(message)
    self.status = status
    self.headers = headers or {}


@dataclasses.dataclass(frozen=True)
class Limits:
  """The server's bounds on clients; see the module docstring."""

  max_connections: int = 32
  header_deadline_s: float = 20.0
  min_upload_bytes_per_s: float = 100_000.0
  stall_timeout_s: float = 60.0

  def __post_init__(self):
    if self.max_connections < 1:
      raise ValueError(f"max_connections must be at least 1, got {self.max_connections}.")
    for name in ("header_deadline_s", "min_upload_bytes_per_s", "stall_timeout_s"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")


def check_name(name: str) -> str:
  """`name` when it is a file name (what a browser sends for a File); RequestError 400
  for a path (`/`, `\\`, `..`), control characters (NUL among them), or over 255
  characters. Uploads are written under a name of the server's own, whatever this says;
  a name that is a path is refused so that no client can make it look otherwise."""
  if not name or len(name) > _MAX_NAME:
    raise RequestError(f"A picture's name must have 1 to {_MAX_NAME} characters.")
  if any(ord(c) < 32 or ord(c) == 127 for c in name):
    raise RequestError(f"{name!r}: a picture's name may not hold control characters.")
  if "/" in name or "\\" in name or name in (".", "..") or ":" in name[:2]:
    raise RequestError(f"{name!r}: a picture's name is a file name, not a path.")
  return name


def page_policy(page: bytes) -> str:
  """The content-security policy of HTML `page`: scripts from this server only; styles
  from this server or the page's own `<style>` blocks, each allowed by its SHA-256 (a
  style injected into the page would not match)."""
  hashes = "".join(
      f" 'sha256-{base64.b64encode(hashlib.sha256(block).digest()).decode()}'"
      for block in _STYLE_BLOCK.findall(page)
  )
  return (
      "default-src 'self'; script-src 'self'; img-src 'self' blob: data:; "
      f"style-src 'self'{hashes}; connect-src 'self'; base-uri 'none'; form-action 'self'; "
      "frame-ancestors 'none'"
  )


class ModelQueue:
  """Admission to the one model: one request counted and at most `size` waiting. A
  request beyond them raises RequestError 503 with a `Retry-After` of about the time
  the queue takes to empty (from the last counts' times)."""

  def __init__(self, size: int):
    if size < 0:
      raise ValueError(f"queue_size must be 0 or more, got {size}.")
    self.size = size
    self._slots = threading.BoundedSemaphore(size + 1)
    self._seconds = 1.0  # a moving average of one request's time in the model
    self.refused = 0

  @contextlib.contextmanager
  def turn(self):
    """A place in the queue for the block's duration; RequestError 503 when full."""
    if not self._slots.acquire(blocking=False):
      self.refused += 1
      retry = max(1, math.ceil(self._seconds * (self.size + 1)))
      raise RequestError(
          f"The server is busy: {self.size + 1} pictures are being counted or waiting. "
          f"Try again in {retry} s.",
          status=503,
          headers={"Retry-After": str(retry)},
      )
    start = time.perf_counter()
    try:
      yield
    finally:
      self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - start) / (self.size + 1)
      self._slots.release()


def _busy_answer(retry_after: int) -> bytes:
  body = json.dumps({"error": f"The server is busy; try again in {retry_after} s."}).encode()
  head = (
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
      f"Content-Length: {len(body)}\r\nRetry-After: {retry_after}\r\nConnection: close\r\n"
      f"Content-Security-Policy: {API_POLICY}\r\nX-Content-Type-Options: nosniff\r\n\r\n"
  )
  return head.encode() + body


class GuardedHTTPServer(http.server.ThreadingHTTPServer):
  """A threading HTTP server with at most `limits.max_connections` connection threads
  and a deadline on reading each request (see the module docstring)."""

  def __init__(self, address, handler, limits: Limits | None = None):
    self.limits = limits or Limits()
    self._active = 0
    self._watched: dict = {}  # handler -> the time its request must have arrived by
    self._read_shut: set = set()  # connections whose reading `service_actions` ended
    self._count_lock = threading.Lock()
    self.refused_connections = 0
    super().__init__(address, handler)

  def process_request(self, request, client_address):
    with self._count_lock:
      full = self._active >= self.limits.max_connections
      if not full:
        self._active += 1
    if not full:
      super().process_request(request, client_address)
      return
    self.refused_connections += 1
    try:  # on the server's own thread: a small answer, nothing waited for
      request.settimeout(1.0)
      request.sendall(_busy_answer(2))
      request.setblocking(False)
      with contextlib.suppress(OSError):
        request.recv(_CHUNK)  # what has arrived already: closing on it would reset
    except OSError:
      pass
    self.shutdown_request(request, linger=False)

  def process_request_thread(self, request, client_address):
    try:
      super().process_request_thread(request, client_address)
    finally:
      with self._count_lock:
        self._active -= 1

  def shutdown_request(self, request, linger: bool = True):
    """Closes a connection; first, with `linger`, reads and drops what the client still
    sends (up to 1 MiB, for 1 s or until the client closes): closing a socket with
    unread data resets the connection, and the client would lose the answer it was sent."""
    with self._count_lock:
      read_shut = request in self._read_shut
      self._read_shut.discard(request)
    with contextlib.suppress(OSError):
      request.shutdown(socket.SHUT_WR)
      if linger:
        _drain(request, 1.0, read_shut)
    self.close_request(request)

  def watch(self, handler, seconds: float) -> None:
    """`handler`'s request must be read within `seconds` from now."""
    with self._count_lock:
      self._watched[handler] = time.monotonic() + seconds

  def unwatch(self, handler) -> None:
    with self._count_lock:
      self._watched.pop(handler, None)

  def service_actions(self):
    """Each turn of `serve_forever`'s loop (every 0.5 s at most): ends the reading of
    requests whose line and headers are past their deadline (the blocked read returns;
    the handler answers 408). Under the lock that `unwatch` takes: a handler that
    unwatched itself in time is never cut."""
    now = time.monotonic()
    with self._count_lock:
      late = [handler for handler, deadline in self._watched.items() if deadline < now]
      for handler in late:
        del self._watched[handler]
        handler.expired = True
        self._read_shut.add(handler.connection)
        with contextlib.suppress(OSError):
          handler.connection.shutdown(socket.SHUT_RD)
    for handler in late:
      logging.warning("%s did not send its headers in time; answered 408.", handler.client_address)


def _drain(request: socket.socket, seconds: float, read_shut: bool) -> None:
  """Reads and drops what the client sends on `request`, up to 1 MiB, for `seconds` or
  until the client closes. After SHUT_RD a read returns b"" at once whether or not the
  client closed (data still arriving is queued and read): then it polls."""
  deadline, dropped = time.monotonic() + seconds, 0
  while dropped < _CHUNK:
    left = deadline - time.monotonic()
    if left <= 0:
      return
    request.settimeout(left)
    data = request.recv(65536)
    if data:
      dropped += len(data)
    elif not read_shut:
      return  # the client closed its side
    else:
      time.sleep(min(0.05, left))


class GuardedHandler(http.server.BaseHTTPRequestHandler):
  """JSON errors, the content-security policy, and deadlines on reading requests, for
  the handlers of `GuardedHTTPServer` (which `serve._Handler` derives from)."""

  server: GuardedHTTPServer
  expired = False  # set by the server when this request's deadline passed
  _policy: str | None = None  # this answer's policy, when not API_POLICY
  _extra_headers: dict | None = None

  def setup(self):
    self.timeout = self.server.limits.stall_timeout_s
    super().setup()

  def handle_one_request(self):
    self.expired = False
    # What an answer reads, even when the request line never arrived whole.
    self.command, self.requestline, self.request_version = None, "", "HTTP/1.0"
    self.server.watch(self, self.server.limits.header_deadline_s)
    try:
      super().handle_one_request()
    finally:
      self.server.unwatch(self)

  def parse_request(self) -> bool:
    """http.server's parsing; a request whose line or headers were cut by the deadline
    is answered 408. The headers are in: the watch ends, and a body has its own
    deadline (`read_body`), from now."""
    parsed = not self.expired and super().parse_request()
    self.server.unwatch(self)  # under the watcher's lock: `expired` is final after it
    self._headers_read_at = time.monotonic()
    if self.expired:
      self._too_slow()
      return False
    return parsed

  def read_body(self, length: int) -> bytes:
    """The request's body, `length` bytes (checked against the limits by the caller),
    read within its deadline (`Limits.header_deadline_s` plus `length` at
    `min_upload_bytes_per_s`, from the end of the headers): each read waits for what is
    left of it, or `stall_timeout_s` if less. RequestError 408 for a client too slow,
    400 for a body that ends before `length`; the connection then closes, after the
    lingering drain reads what the client still sends (its answer is not reset)."""
    limits = self.server.limits
    deadline = (
        getattr(self, "_headers_read_at", time.monotonic())
        + limits.header_deadline_s
        + length / limits.min_upload_bytes_per_s
    )
    chunks, left, late = [], length, False
    try:
      while left > 0:
        wait = deadline - time.monotonic()
        if wait <= 0:
          late = True
          break
        self.connection.settimeout(min(wait, limits.stall_timeout_s))
        chunk = self.rfile.read1(min(left, _CHUNK))
        if not chunk:
          break
        chunks.append(chunk)
        left -= len(chunk)
    except TimeoutError:
      late = True
    finally:
      with contextlib.suppress(OSError):
        self.connection.settimeout(limits.stall_timeout_s)
    if left > 0:
      self.close_connection = True
      got = length - left
      if late:
        logging.warning("%s did not send its body in time; answered 408.", self.client_address)
        raise RequestError(f"The upload was too slow: {got} of {length} bytes arrived.", 408)
      raise RequestError(f"The upload ended after {got} of its {length} bytes.", 400)
    return b"".join(chunks)

  def _too_slow(self):
    self.close_connection = True
    limit = self.server.limits.header_deadline_s
    self.send_json(408, {"error": f"The request did not arrive within {limit:g} s."})

  def send_error(self, code, message=None, explain=None):
    """http.server's own refusals (bad request line, header too long, too many headers,
    unknown method), as JSON; an unknown method is 405, naming the allowed ones."""
    headers = {}
    if self.request_version == "HTTP/0.9":  # a bad request line: answer with a status line
      self.request_version = "HTTP/1.0"
    if code == 501:
      code, headers = 405, {"Allow": "GET, POST"}
      message = f"Method {self.command!r} is not allowed: GET or POST."
    elif code == 431:
      message = f"{message}: header lines of at most 65536 bytes and 100 headers are taken."
    self.close_connection = True
    self.send_json(code, {"error": message or self.responses.get(code, ("",))[0]}, headers)

  def send_json(self, status: int, body: dict, headers: dict | None = None) -> None:
    self.send_body(status, json.dumps(body).encode(), "application/json", headers)

  def send_body(self, status, body: bytes, content_type: str, headers=None) -> None:
    """An answer: HTML pages under their `page_policy`, anything else under API_POLICY."""
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    if self.close_connection:
      self.send_header("Connection", "close")
    for name, value in (headers or {}).items():
      self.send_header(name, value)
    if content_type.startswith("text/html"):
      self._policy = page_policy(body)
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def end_headers(self):
    self.send_header("Content-Security-Policy", self._policy or API_POLICY)
    self.send_header("X-Content-Type-Options", "nosniff")
    self._policy = None
    super().end_headers()
