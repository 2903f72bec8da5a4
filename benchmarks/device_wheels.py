"""Wheels for a GPU host without a package index: exactly what it lacks to run the project.

    python benchmarks/device_wheels.py --present host_packages.txt --out .whl

Run it on a machine with pip access. `--present` lists what the GPU host already has,
one distribution per line (`python3 -m pip list --format=freeze` there, or bare names);
`benchmarks/gpu_host_packages.txt` is that list for the lent H100/H200 image. The script
resolves requirements.txt plus the test tools (`EXTRA`) for that host's Python and
platform (CPython 3.12, manylinux x86-64 by default) without installing anything, drops
every distribution the host has, and downloads the rest as wheels into `--out`.
`benchmarks/device_check.sh` installs them from there with `pip --no-index`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRA = ("pytest", "pytest-xdist", "filelock")  # device_check.sh runs tests there.
# Needed distributions published only as source (pure Python): built into wheels here
# first, so that the resolver for another platform, which takes only wheels, finds them.
SOURCE_ONLY = ("promise",)  # a tensorflow-datasets dependency.
PLATFORMS = (
    "manylinux_2_39_x86_64",
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def canonical(name: str) -> str:
  """PEP 503 name: lower case, runs of -_. as one '-'."""
  return re.sub(r"[-_.]+", "-", name).lower()


def read_present(path: Path) -> set[str]:
  names = set()
  for line in path.read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      names.add(canonical(re.split(r"[=<>!~ @\[;]", line, maxsplit=1)[0]))
  return names


def target_args(python_version: str) -> list[str]:
  args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
  for platform in PLATFORMS:
    args += ["--platform", platform]
  return args


def build_source_only(wheelhouse: Path) -> None:
  subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheelhouse)]
      + list(SOURCE_ONLY),
      check=True,
  )


def resolve(
    requirements: list[str], python_version: str, wheelhouse: Path
) -> list[tuple[str, str]]:
  """(name, version) of every distribution a fresh install would need, by pip's resolver,
  reading package metadata only (and the wheels in `wheelhouse`)."""
  with tempfile.TemporaryDirectory() as scratch:
    report = Path(scratch) / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        + ["--target", str(Path(scratch) / "target"), "--report", str(report)]
        + ["--find-links", str(wheelhouse)]
        + target_args(python_version)
        + requirements,
        check=True,
    )
    install = json.loads(report.read_text())["install"]
  return [(item["metadata"]["name"], item["metadata"]["version"]) for item in install]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--present", type=Path, required=True, help="the host's package list")
  parser.add_argument("--out", type=Path, default=ROOT / ".whl")
  parser.add_argument("--python_version", default="3.12")
  args = parser.parse_args()
  requirements = [
      line.split("#")[0].strip()
      for line in (ROOT / "requirements.txt").read_text().splitlines()
      if line.split("#")[0].strip()
  ] + list(EXTRA)
  present = read_present(args.present)
  args.out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as wheelhouse:
    build_source_only(Path(wheelhouse))
    needed = resolve(requirements, args.python_version, Path(wheelhouse))
    missing = [(name, version) for name, version in needed if canonical(name) not in present]
    print(f"{len(needed)} distributions needed, {len(needed) - len(missing)} on the host.")
    if missing:
      subprocess.run(
          [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(args.out)]
          + ["--find-links", wheelhouse]
          + target_args(args.python_version)
          + [f"{name}=={version}" for name, version in missing],
          check=True,
      )
  wheels = sorted(args.out.glob("*.whl"))
  size = sum(wheel.stat().st_size for wheel in wheels) / 2**20
  print(f"{len(missing)} missing, as wheels in {args.out} ({size:.1f} MiB):")
  for name, version in missing:
    print(f"  {name} {version}")


if __name__ == "__main__":
  main()
