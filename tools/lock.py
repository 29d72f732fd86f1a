"""Write requirements.lock: exact pins with sha256 hashes, from a list of pins.

    python tools/lock.py PINS > requirements.lock      (make lock runs it)

PINS is `pip freeze` of a fresh venv built from requirements.in. pip resolves
each pin without installing anything (`pip install --dry-run --report`) and
reports the file it would take and its sha256; the lock names exactly that
file's hash, so `pip install -r requirements.lock` runs in hash-checking mode
and a changed or substituted file fails the install. The hashes are those of
the files for this platform (CPython 3.11, Linux x86_64): another platform
needs its own `make lock`. torch keeps its local version label (`+cpu`), so
pip can only take the CPU build; where it is not on disk (this project's
machines carry it), point pip at PyTorch's CPU index (see README).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER = (
    "# Generated from requirements.in by 'make lock' (pip freeze of a fresh venv, with the\n"
    "# sha256 of each file pip takes on Linux x86_64 / CPython 3.11). Do not edit by hand.\n"
)


def hashed_pins(pins: Path) -> list[str]:
    """`name==version --hash=sha256:...` for each pin, in the pins' order."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                "--no-deps", "--quiet", "--report", str(report), "-r", str(pins),
            ],
            check=True,
        )  # fmt: skip
        chosen = json.loads(report.read_text())["install"]
    hashes = {
        item["metadata"]["name"].lower().replace("_", "-"): (
            item["metadata"]["version"],
            item["download_info"]["archive_info"]["hashes"]["sha256"],
        )
        for item in chosen
    }
    lines = []
    for line in pins.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("==")[0].split("[")[0].strip()
        version, digest = hashes[name.lower().replace("_", "-")]
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}")
    return lines


def main() -> None:
    """Print the hashed lock for the pins file named on the command line."""
    sys.stdout.write(HEADER + "\n".join(hashed_pins(Path(sys.argv[1]))) + "\n")


if __name__ == "__main__":
    main()
