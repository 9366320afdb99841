"""Create the project's virtual environment with a working pip, on any machine with python3.

Debian's python3 ships without ensurepip unless python3-venv is installed; then the venv is created
without pip and pip is installed from its wheel on PyPI: a pinned version, checked against the SHA-256
written here (not one the index reports), so every machine gets the same pip.

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

# The simple index's JSON form (PEP 691) says where the file is; the pin below says what it must be.
PIP_INDEX = "https://pypi.org/simple/pip/"
PIP_WHEEL = "pip-26.3-py3-none-any.whl"
PIP_WHEEL_SHA256 = "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13"


def _pip_works(python: Path) -> bool:
    return subprocess.run([python, "-m", "pip", "--version"], capture_output=True, check=False).returncode == 0


def _install_pip_from_pypi(python: Path) -> None:
    request = urllib.request.Request(PIP_INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - fixed https URL
        files = json.load(response)["files"]
    url = next((entry["url"] for entry in files if entry["filename"] == PIP_WHEEL), None)
    if url is None:
        raise SystemExit(f"the package index does not list {PIP_WHEEL}")
    with urllib.request.urlopen(urllib.parse.urljoin(PIP_INDEX, url), timeout=120) as response:  # noqa: S310
        data = response.read()
    if hashlib.sha256(data).hexdigest() != PIP_WHEEL_SHA256:
        raise SystemExit(f"{PIP_WHEEL} as downloaded does not match its pinned SHA-256")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / PIP_WHEEL
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
