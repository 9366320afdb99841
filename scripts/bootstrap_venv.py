"""Create the project's virtual environment with a working pip, on any machine with python3.

Debian's python3 ships without ensurepip unless python3-venv is installed; then the venv is created
without pip and pip is installed from its wheel on PyPI (checked against PyPI's SHA-256).

    python3 scripts/bootstrap_venv.py .venv
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import venv
from pathlib import Path

PYPI_JSON = "https://pypi.org/pypi/pip/json"


def _pip_works(python: Path) -> bool:
    return subprocess.run([python, "-m", "pip", "--version"], capture_output=True, check=False).returncode == 0


def _install_pip_from_pypi(python: Path) -> None:
    with urllib.request.urlopen(PYPI_JSON, timeout=60) as response:
        release = json.load(response)
    wheel = next(f for f in release["urls"] if f["packagetype"] == "bdist_wheel")
    with urllib.request.urlopen(urllib.parse.urljoin(PYPI_JSON, wheel["url"]), timeout=120) as response:  # noqa: S310 - URL from PyPI itself
        data = response.read()
    if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
        raise SystemExit("the pip wheel downloaded from PyPI does not match its published SHA-256")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / wheel["filename"]
        path.write_bytes(data)
        # A wheel is a zip that Python can run from: pip installs itself from its own wheel.
        subprocess.run([python, f"{path}/pip", "install", "--quiet", str(path)], check=True)


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".venv")
    python = target / "bin" / "python"
    if python.exists() and _pip_works(python):
        return 0
    try:
        venv.create(target, with_pip=True, clear=python.exists())
    except subprocess.CalledProcessError:
        venv.create(target, with_pip=False, clear=True)
    if not _pip_works(python):
        _install_pip_from_pypi(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
