"""The counting page under load and under attack: concurrent clients mixing real photos
and hostile requests against `launch.py --mode serve` on 127.0.0.1.

    python benchmarks/serve_load.py --workdir runs/quickstart \
        --photos ../shared/data/sht_sample/images --clients 16 --requests 25 --queue_size 4

Starts the server as a subprocess (loopback only, a queue smaller than the number of
clients so that 503s occur, and its temporary folder a fresh one), counts each photo
with `CrowdCounter.predict` in this process (predict mode's count), sends each photo
once to compile its shape, then runs `--clients` threads of `--requests` requests each:
every `--hostile_every`-th request is one of the hostile classes of `HOSTILE` in turn,
the others a photo. Each answer is checked: a photo's 200 must carry predict's count
for that photo, a 503 a `Retry-After`; a hostile request must get its class's 4xx.
Anything else is a lost request. Every photo must be counted (a 200) at least once,
and the queue must have been full (a 503) at least once. At the end the server must
still answer, its temporary folder must be empty, and nothing may have been written
under the names the path tricks aim at. Prints requests, answers by status, latency
percentiles and the server's peak resident memory (VmHWM); `--out` writes them as JSON.
Bounded in time: clients stop starting requests after `--time_limit_s`, and each
request times out.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_ESCAPE = "cfrnet_load_escape"  # the file the path tricks try to write


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
  """A valid 57-byte PNG declaring `width` x `height` pixels (a decompression bomb
  as a server sees it: tiny, with a huge declared size), one empty data chunk."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def _post(name: str, body: bytes, content_type: str = "image/jpeg", **headers) -> bytes:
  """The bytes of a POST /api/count request for `body` named `name`."""
  lines = [f"POST /api/count?name={name} HTTP/1.1", "Host: 127.0.0.1"]
  if content_type:
    lines.append(f"Content-Type: {content_type}")
  lines += [f"{key.replace('_', '-')}: {value}" for key, value in headers.items()]
  return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def hostile_requests(photo: bytes, max_upload_bytes: int) -> dict:
  """{class: (request bytes, how it is sent, the status it must get)}. How: "all" sends
  it and reads the answer; "half" sends it, then closes the sending side (a body cut
  short); "slow" sends it one byte every 0.5 s until the server answers (a slowloris)."""
  head = _post("slow.jpg", b"", Content_Length=len(photo))
  return {
      "not a picture": (_post("notes.jpg", b"text", Content_Length=4), "all", 400),
      "truncated picture": (
          _post("cut.jpg", photo[: len(photo) // 3], Content_Length=len(photo) // 3),
          "all",
          400,
      ),
      "decompression bomb": (
          _post("bomb.png", bomb_png(), "image/png", Content_Length=len(bomb_png())),
          "all",
          400,
      ),
      "path in name (../)": (
          _post(f"../../{_ESCAPE}.jpg", photo, Content_Length=len(photo)),
          "all",
          400,
      ),
      "path in name (absolute)": (
          _post(f"/tmp/{_ESCAPE}.jpg", photo, Content_Length=len(photo)),
          "all",
          400,
      ),
      "path in name (NUL)": (
          _post(f"{_ESCAPE}%00.jpg", photo, Content_Length=len(photo)),
          "all",
          400,
      ),
      "path in name (backslash)": (
          _post(f"..%5C..%5C{_ESCAPE}.jpg", photo, Content_Length=len(photo)),
          "all",
          400,
      ),
      "wrong content type": (
          _post("form.jpg", b"a=1", "application/x-www-form-urlencoded", Content_Length=3),
          "all",
          415,
      ),
      "over the upload limit": (
          _post("huge.jpg", b"x" * 10, Content_Length=2 * max_upload_bytes),
          "all",
          413,
      ),
      "no Content-Length": (_post("none.jpg", b""), "half", 411),
      "invalid Content-Length": (_post("neg.jpg", b"", Content_Length=-5), "all", 400),
      "body shorter than its Content-Length": (
          _post("short.jpg", photo[:100], Content_Length=len(photo)),
          "half",
          400,
      ),
      "huge header": (_post("h.jpg", b"", X_Filler="x" * 70_000, Content_Length=0), "all", 431),
      "too many headers": (
          _post("h.jpg", b"", Content_Length=0, **{f"X_H{i}": i for i in range(120)}),
          "all",
          431,
      ),
      "slow client": (head, "slow", 408),
      "unknown route": (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", "all", 404),
      "unknown method": (b"DELETE /api/count HTTP/1.1\r\nHost: x\r\n\r\n", "all", 405),
  }


def send_raw(port: int, data: bytes, how: str = "all", timeout: float = 120.0):
  """Sends request bytes `data` on a new connection to 127.0.0.1:`port` as `how` says
  (see `hostile_requests`); (status, headers, JSON body) of the answer, status 0 when
  the server closed without one."""
  with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
    if how == "slow":
      connection.settimeout(0.5)
      for byte in data:
        try:
          connection.sendall(bytes([byte]))
          if connection.recv(1, socket.MSG_PEEK):
            break
        except TimeoutError:
          continue
        except OSError:
          break
      connection.settimeout(timeout)
    else:
      with contextlib.suppress(OSError):
        connection.sendall(data)
      if how == "half":
        connection.shutdown(socket.SHUT_WR)
    answer = http.client.HTTPResponse(connection)
    try:
      answer.begin()
      body = answer.read()
    except (OSError, http.client.HTTPException) as error:
      return 0, {}, {"no answer": repr(error)}
    try:
      parsed = json.loads(body)
    except ValueError:
      parsed = {"raw": body[:200].decode(errors="replace")}
    return answer.status, dict(answer.getheaders()), parsed


def run_load(port, photos, expected, hostile, clients, requests, hostile_every, time_limit_s):
  """`clients` threads of `requests` requests each on 127.0.0.1:`port`. `photos` maps a
  name to its file bytes, `expected` a name to predict's count, `hostile` is
  `hostile_requests`' dict. Returns the list of records: (client, kind, status,
  seconds, lost reason or None)."""
  names, classes = sorted(photos), sorted(hostile)
  records, lock = [], threading.Lock()
  stop_at = time.monotonic() + time_limit_s
  start = threading.Barrier(clients)

  def client(index):
    start.wait()
    for number in range(requests):
      if time.monotonic() > stop_at:
        return
      turn = index * requests + number
      if hostile_every and turn % hostile_every == hostile_every - 1:
        kind = classes[(turn // hostile_every) % len(classes)]
        data, how, wanted = hostile[kind]
      else:
        kind = names[turn % len(names)]
        body = photos[kind]
        data, how, wanted = (
            _post(urllib.parse.quote(kind), body, Content_Length=len(body)),
            "all",
            200,
        )
      began = time.perf_counter()
      status, headers, body = send_raw(port, data, how)
      seconds = time.perf_counter() - began
      lost = _judge(kind, status, headers, body, wanted, expected.get(kind))
      with lock:
        records.append((index, kind, status, seconds, lost))

  threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(max(1.0, stop_at - time.monotonic() + 300))
  return records


def _judge(kind, status, headers, body, wanted, count):
  """None when the answer is right for the request, else why it is not."""
  if status == 503:
    if not headers.get("Retry-After", "").isdigit() or "error" not in body:
      return "503 without Retry-After or a JSON error"
    return None
  if status != wanted:
    return f"status {status}, expected {wanted}: {body}"
  if status != 200:
    return None if isinstance(body.get("error"), str) else "an error without a JSON reason"
  if count is None or abs(body.get("count", float("nan")) - count) > 1e-4 * max(1.0, abs(count)):
    return f"count {body.get('count')} but predict counts {count}"
  return None


def without_a_200(records, names) -> list[str]:
  """The photo `names` that no request of `records` got counted (a 200): a server
  answering every photo 503 would lose nothing and count nothing."""
  counted = {r[1] for r in records if r[2] == 200}
  return sorted(set(names) - counted)


def summary(records) -> dict:
  """Requests, answers by status, lost ones, latency percentiles (all, and 200s)."""
  seconds = np.array([r[3] for r in records]) if records else np.zeros(1)
  counted = np.array([r[3] for r in records if r[2] == 200]) if records else np.zeros(1)

  def percentiles(values):
    if not len(values):
      return {}
    return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 90, 99)} | {
        "max": round(float(values.max()), 3)
    }

  lost = [f"{r[1]}: {r[4]}" for r in records if r[4]]
  kinds = collections.defaultdict(lambda: {"tried": 0, "survived": 0, "lost": 0, "statuses": {}})
  for _, kind, status, _, why in records:
    row = kinds[kind]
    row["tried"] += 1
    row["lost" if why else "survived"] += 1
    row["statuses"][str(status)] = row["statuses"].get(str(status), 0) + 1
  return {
      "requests": len(records),
      "by_status": dict(sorted(collections.Counter(str(r[2]) for r in records).items())),
      "lost": len(lost),
      "lost_examples": lost[:10],
      "latency_s": percentiles(seconds),
      "latency_200_s": percentiles(counted),
      "by_kind": dict(sorted(kinds.items())),
  }


def _start_server(args, temporary: Path) -> tuple[subprocess.Popen, int]:
  command = [
      sys.executable, "launch.py", "--mode=serve", f"--workdir={args.workdir}", "--port=0",
      "--host=127.0.0.1", f"--queue_size={args.queue_size}",
      f"--max_upload_mb={args.max_upload_mb}",
      f"--read_deadline_s={args.read_deadline_s}", f"--max_connections={args.max_connections}",
  ]  # fmt: skip
  environment = dict(os.environ, TMPDIR=str(temporary))
  process = subprocess.Popen(
      command,
      cwd=REPO,
      env=environment,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  lines = []
  for line in process.stdout:
    lines.append(line)
    found = re.search(r"Serving the counting page on http://127\.0\.0\.1:(\d+)/", line)
    if found:
      threading.Thread(
          target=lambda: [lines.append(x) for x in process.stdout], daemon=True
      ).start()
      process.log = lines
      return process, int(found.group(1))
  raise SystemExit("launch.py --mode serve did not start:\n" + "".join(lines[-30:]))


def escaped_files(*folders: Path) -> list[str]:
  """The files named like the path tricks' target in /, /tmp, the repository, its
  parent and `folders` (where `..`, absolute and backslash names would put them): none
  may exist after a run."""
  found = []
  for folder in (Path("/"), Path("/tmp"), REPO, REPO.parent, *folders):
    found += [str(path) for path in folder.glob(f"*{_ESCAPE}*")]
  return found


def _peak_rss_mib(pid: int) -> float:
  for line in Path(f"/proc/{pid}/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def _photos(folders, limit) -> dict:
  from cfrnet_jax.inference.user_images import collect_images

  files, _ = collect_images(folders)
  chosen = sorted(files)[:limit]
  if not chosen:
    raise SystemExit(f"No pictures in {folders}.")
  return {path.name: path for path in chosen}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a run with a checkpoint")
  parser.add_argument("--photos", nargs="+", default=["../shared/data/sht_sample/images"])
  parser.add_argument("--max_photos", type=int, default=5)
  parser.add_argument("--clients", type=int, default=16)
  parser.add_argument("--requests", type=int, default=25, help="per client")
  parser.add_argument("--queue_size", type=int, default=4)
  parser.add_argument("--hostile_every", type=int, default=3, help="every Nth request is hostile")
  parser.add_argument("--max_upload_mb", type=float, default=5.0)
  parser.add_argument("--read_deadline_s", type=float, default=10.0)
  parser.add_argument("--max_connections", type=int, default=32)
  parser.add_argument("--time_limit_s", type=float, default=1200.0)
  parser.add_argument("--out", help="write the figures as JSON here")
  args = parser.parse_args()
  if args.queue_size + 1 >= args.clients:
    parser.error("--queue_size must be smaller than --clients - 1 for the queue to fill.")
  from cfrnet_jax.inference.counter import CrowdCounter

  paths = _photos(args.photos, args.max_photos)
  counter = CrowdCounter.from_checkpoint(args.workdir)
  expected = {name: counter.predict(path).count for name, path in paths.items()}
  photos = {name: path.read_bytes() for name, path in paths.items()}
  hostile = hostile_requests(next(iter(photos.values())), int(args.max_upload_mb * 1e6))
  with tempfile.TemporaryDirectory(prefix="cfrnet_load_tmp_") as temporary:
    process, port = _start_server(args, Path(temporary))
    try:
      began = time.perf_counter()
      warm = run_load(port, photos, expected, hostile, 1, len(photos), 0, args.time_limit_s)
      warm_s = time.perf_counter() - began
      began = time.perf_counter()
      records = run_load(
          port, photos, expected, hostile, args.clients, args.requests, args.hostile_every,
          args.time_limit_s,
      )  # fmt: skip
      figures = summary(records) | {"wall_s": round(time.perf_counter() - began, 1)}
      after = send_raw(port, b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n", timeout=30)
      figures |= {
          "command": " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
          "clients": args.clients,
          "requests_per_client": args.requests,
          "queue_size": args.queue_size,
          "hostile_classes": {kind: wanted for kind, (_, _, wanted) in hostile.items()},
          "warm_up": summary(warm) | {"wall_s": round(warm_s, 1)},
          "answers_after": after[0],
          "peak_rss_mib": round(_peak_rss_mib(process.pid), 1),
          "left_in_temporary_folder": sorted(os.listdir(temporary)),
          "escaped_files": escaped_files(),
          "server_alive": process.poll() is None,
          "photos_without_a_200": without_a_200(records, photos),
      }
    finally:
      process.terminate()
      process.wait(timeout=60)
  print(json.dumps(figures, indent=1))
  if figures["lost"]:
    print("The server's warnings and errors:")
    print("".join(line for line in process.log if line[:1] in "WEF" or "Error" in line)[-5000:])
  if args.out:
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
  failed = figures["lost"] or figures["answers_after"] != 200 or not figures["server_alive"]
  # Every photo counted at least once, and the queue full at least once (a 503).
  failed = failed or figures["photos_without_a_200"] or "503" not in figures["by_status"]
  sys.exit(1 if failed or figures["left_in_temporary_folder"] or figures["escaped_files"] else 0)


if __name__ == "__main__":
  main()
