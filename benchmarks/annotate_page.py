"""The annotation page with thousands of points: time to draw and to add a point, and the
docs' screenshot (docs/annotate.md, docs/annotate_page.png).

    python benchmarks/annotate_page.py [--workdir runs/quickstart] \
        [--ucf ../shared/data/ucf_cc_50 --image 1] [--out docs/annotate_page.png]

Copies UCF_CC_50 image `--image` (1.jpg: 4,633 heads) into a temporary folder, saves its
annotation (`annPoints` of N_ann.mat, clipped to the picture) there as the page's own
LabelMe file, serves the annotation page in this process (the model of `--workdir`, or a
fresh tiny model: its proposals mean nothing, the drawing is the same) and, in headless
Chromium (Debian's `chromium`, driven by Playwright), opens the picture and measures:

* draw: the page's own `draw()` (canvas.dataset.drawMs: picture and every point, one path
  each kind) after zooming in and out with the keyboard, at fit and zoomed in;
* frame after a key: key press (Playwright) to the next animation frame after the draw;
* add a point: mouse button released to the animation frame after the point is drawn, as
  the page sees it (a listener on the release, then requestAnimationFrame), and the
  wall-clock time of Playwright's click until the page's count shows the new point.

Prints medians and the 90th percentile over `--repeats` trials, and saves a screenshot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.serve_screenshot import CHROMIUM_FLAGS
from cfrnet_jax.inference.annotate import AnnotationService
from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.serve import DEFAULT_MAX_UPLOAD_MB, CountingService, make_server

# Registered by the benchmark (not the page): a mouse release's time, then the first
# animation frame after the page's own handler asked for its draw.
_LATENCY_PROBE = """() => {
  window.__latencies = [];
  let pressed = 0;
  window.addEventListener("mouseup", () => { pressed = performance.now(); }, true);
  window.addEventListener("mouseup", () => {
    requestAnimationFrame(() => window.__latencies.push(performance.now() - pressed));
  });
}"""
_NEXT_FRAME = "() => new Promise((done) => requestAnimationFrame(() => done()))"


def _summary(values: list[float]) -> str:
  ordered = sorted(values)
  p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
  return f"median {statistics.median(ordered):.1f} ms, p90 {p90:.1f} ms (n={len(ordered)})"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", help="a trained run (default: a fresh tiny model)")
  parser.add_argument("--ucf", default="../shared/data/ucf_cc_50")
  parser.add_argument("--image", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--out", default="docs/annotate_page.png")
  parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
  args = parser.parse_args()
  from playwright.sync_api import sync_playwright

  from tfds_crowd.ucf_cc_50 import parse_annotation

  ucf = Path(args.ucf)
  if args.workdir:
    counter = CrowdCounter.from_checkpoint(args.workdir)
  else:
    from configs import tiny

    counter = CrowdCounter.from_config(tiny.get_config(), seed=0)
  folder = Path(tempfile.mkdtemp(prefix="annotate_benchmark_"))
  name = f"{args.image}.jpg"
  shutil.copy(ucf / name, folder / name)
  width, height = Image.open(folder / name).size
  points = parse_annotation((ucf / f"{args.image}_ann.mat").read_bytes(), name)
  points = np.clip(points, 0, [width, height])
  annotation = AnnotationService(counter, folder)
  annotation.save(name, json.dumps({"points": points.tolist()}).encode())
  server = make_server(
      CountingService(counter, DEFAULT_MAX_UPLOAD_MB), port=0, annotation=annotation
  )
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    with sync_playwright() as playwright:
      browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
      page = browser.new_page(viewport={"width": 1280, "height": 860})
      page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
      page.locator(f"body[data-loaded='{name}']").wait_for(state="attached", timeout=600_000)
      shown = int(page.inner_text("#npoints"))
      print(f"{name}: {width}x{height}, {shown} points shown, model {page.inner_text('#model')}.")
      page.screenshot(path=args.out)
      # A crowd photo in 96 colours: a third of the bytes, the same look.
      quantized = Image.open(args.out).convert("RGB").quantize(96, Image.Quantize.MEDIANCUT)
      quantized.save(args.out, optimize=True)
      canvas = page.locator("#canvas").bounding_box()
      middle = (canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2)
      page.mouse.move(*middle)

      draws = {"fit": [], "zoomed x4": []}
      frames = []
      for _ in range(args.repeats):
        page.keyboard.press("f")
        page.evaluate(_NEXT_FRAME)
        start = time.perf_counter()
        page.keyboard.press("+")
        page.evaluate(_NEXT_FRAME)
        frames.append(1000 * (time.perf_counter() - start))
        page.keyboard.press("-")
        page.evaluate(_NEXT_FRAME)
        draws["fit"].append(float(page.locator("#canvas").get_attribute("data-draw-ms")))
      for _ in range(6):  # 1.25^6 = 3.8
        page.keyboard.press("+")
      for _ in range(args.repeats):
        page.keyboard.press("-")
        page.keyboard.press("+")
        page.evaluate(_NEXT_FRAME)
        draws["zoomed x4"].append(float(page.locator("#canvas").get_attribute("data-draw-ms")))
      page.keyboard.press("f")
      page.evaluate(_NEXT_FRAME)

      page.evaluate(_LATENCY_PROBE)
      view = page.evaluate("annotator.view()")
      existing = np.asarray(page.evaluate("annotator.points()"))
      clicks, added = [], 0
      for y in range(int(canvas["y"]) + 30, int(canvas["y"] + canvas["height"]) - 30, 23):
        for x in range(int(canvas["x"]) + 30, int(canvas["x"] + canvas["width"]) - 30, 29):
          if added == args.repeats:
            break
          spot = np.array([x - canvas["x"] - view["x"], y - canvas["y"] - view["y"]])
          spot /= view["scale"]
          inside = 0 <= spot[0] <= width and 0 <= spot[1] <= height
          if not inside or np.min(np.hypot(*(existing - spot).T)) * view["scale"] < 12:
            continue
          start = time.perf_counter()
          page.mouse.click(x, y)
          page.locator("#npoints", has_text=str(shown + added + 1)).wait_for()
          clicks.append(1000 * (time.perf_counter() - start))
          existing = np.vstack([existing, spot])
          added += 1
      latencies = page.evaluate("window.__latencies")
      browser.close()
  finally:
    server.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
  print(f"draw() at fit ({shown} points): {_summary(draws['fit'])}")
  print(f"draw() zoomed in x3.8: {_summary(draws['zoomed x4'])}")
  print(f"key press to the next frame (Playwright, zoom in): {_summary(frames)}")
  print(f"add a point, release to the frame that shows it (in the page): {_summary(latencies)}")
  print(f"add a point, Playwright click until the count shows it: {_summary(clicks)}")
  print(f"Wrote {args.out}.")


if __name__ == "__main__":
  main()
