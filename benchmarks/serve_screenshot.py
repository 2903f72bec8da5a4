"""A screenshot of the counting page (`launch.py --mode serve`) for the docs.

    python benchmarks/serve_screenshot.py --workdir runs/quickstart \
        --pictures ../shared/data/sht_sample/images/IMG_3.jpg --out docs/serve_page.png

Serves `--workdir`'s checkpoint on a free port of 127.0.0.1 in this process, opens the
page in headless Chromium (Debian's `chromium`, driven by Playwright), drops the
pictures on it, adds `--regions` (JSON, picture pixels) when given, waits for every
count and saves a full-page screenshot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading

from cfrnet_jax.inference.counter import CrowdCounter
from cfrnet_jax.inference.serve import DEFAULT_MAX_UPLOAD_MB, CountingService, make_server

# Headless Chromium on a machine without outside network: no sandbox (root in a
# container), no GPU, and none of the background connections that would be refused.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--pictures", nargs="+", required=True)
  parser.add_argument("--regions", help="JSON regions to type into the page")
  parser.add_argument("--out", default="docs/serve_page.png")
  parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
  args = parser.parse_args()
  from playwright.sync_api import sync_playwright

  counter = CrowdCounter.from_checkpoint(args.workdir)
  server = make_server(CountingService(counter, DEFAULT_MAX_UPLOAD_MB), port=0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    with sync_playwright() as playwright:
      browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
      page = browser.new_page(viewport={"width": 1100, "height": 900})
      page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
      if args.regions:
        page.locator("summary").click()
        page.fill("#regions", json.dumps(json.loads(args.regions)))
      page.set_input_files("#files", args.pictures)
      page.wait_for_function(
          f"() => document.querySelectorAll('.card .count, .card.error').length"
          f" === {len(args.pictures)}",
          timeout=600_000,
      )
      page.screenshot(path=args.out, full_page=True)
      browser.close()
  finally:
    server.shutdown()
  print(f"Wrote {args.out}.")


if __name__ == "__main__":
  main()
