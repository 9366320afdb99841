"""requirements.txt is what production runs and nothing else; requirements-dev.txt adds the emulator and
the test tools; requirements.lock is requirements.txt with hashes."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from django.conf import settings

from scripts.lock_requirements import lock_differences, normalize, pins

ROOT = Path(__file__).resolve().parent.parent
# What a production server runs: the project's Python outside tests/, bench/, client/ and the local tools.
RUNTIME_CODE = [ROOT / "cvm_portal", ROOT / "provisioning", ROOT / "manage.py", ROOT / "gunicorn.conf.py"]
DEV_ONLY = {"moto", "pytest", "pytest-django", "pytest-xdist", "hypothesis", "schemathesis", "playwright", "ruff"}


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def _runtime_modules() -> set[str]:
    modules = set()
    for root in RUNTIME_CODE:
        for path in [root] if root.is_file() else root.rglob("*.py"):
            modules |= _imported_modules(path)
    # Apps Django imports by name, never by an import statement.
    modules |= {app.split(".")[0] for app in settings.INSTALLED_APPS}
    modules.add("gunicorn")
    return {m for m in modules if m not in sys.stdlib_module_names and m not in {"cvm_portal", "provisioning"}}


def test_everything_the_runtime_imports_is_installed_by_requirements_txt():
    providers = importlib.metadata.packages_distributions()
    runtime = pins(ROOT / "requirements.txt")
    missing = {
        module: providers.get(module)
        for module in _runtime_modules()
        if not any(normalize(dist) in runtime for dist in providers.get(module, []))
    }
    assert missing == {}, "imported by the portal but not pinned in requirements.txt"


def test_requirements_txt_holds_no_emulator_or_test_tool():
    assert DEV_ONLY & pins(ROOT / "requirements.txt").keys() == set()
    assert pins(ROOT / "requirements-dev.txt").keys() >= DEV_ONLY


def test_requirements_dev_txt_builds_on_requirements_txt_without_repeating_it():
    lines = [line for line in (ROOT / "requirements-dev.txt").read_text().splitlines() if not line.startswith("#")]
    assert lines[0] == "-r requirements.txt"
    assert pins(ROOT / "requirements.txt").keys() & pins(ROOT / "requirements-dev.txt").keys() == set()


def test_requirements_files_are_sorted_one_pin_per_line():
    # So that changes made side by side merge as plain lines.
    for name in ("requirements.txt", "requirements-dev.txt"):
        lines = [line for line in (ROOT / name).read_text().splitlines() if line and not line.startswith(("#", "-r"))]
        assert all("==" in line and " " not in line for line in lines), name
        assert lines == sorted(lines, key=str.lower), f"{name} is not sorted"


def test_the_lock_pins_exactly_requirements_txt():
    assert lock_differences() == [], "requirements.lock is out of date: run `make lock`"
    locked = (ROOT / "requirements.lock").read_text()
    for name, version in pins(ROOT / "requirements.txt").values():
        pinned = re.compile(rf"^{re.escape(name)}=={re.escape(version)} \\\n    --hash=sha256:[0-9a-f]{{64}}", re.M)
        assert pinned.search(locked), f"{name} has no hash in requirements.lock"
