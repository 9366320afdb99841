"""The production image and the compose stack, checked as far as a machine without a container engine can.

The Dockerfile's build stage is carried out here instruction by instruction (COPY into a scratch
directory, RUN with /opt/venv and /app pointing there), so its pip install of requirements.lock, pip
check and collectstatic really run; the production venv it makes must then pass `check --deploy` with
production settings and load gunicorn's config, without any emulator or test tool in it. The compose file
is validated against the Compose Specification's JSON schema (tests/data/compose-spec.json, from
github.com/compose-spec/compose-spec, Apache-2.0).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """[[(INSTRUCTION, arguments), ...] per stage], continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.startswith("#"))
    )
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), " ".join(arguments.split())))
    return stages


def production_env(**extra: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "CVM_TOKEN_HMAC_KEY": secrets.token_urlsafe(40),
        "CVM_AUDIT_HMAC_KEY": secrets.token_urlsafe(40),
        "ALLOWED_HOSTS": "cvm.example.com",
        "DEBUG": "0",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """The build stage of the Dockerfile, carried out with this machine's python3; returns the app dir."""
    scratch = tmp_path_factory.mktemp("image")
    paths = {"/opt/venv": str(scratch / "venv"), "/app": str(scratch / "app")}
    (scratch / "app").mkdir()
    build = dockerfile_stages()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "SECRET_KEY", "CVM_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{Path(sys.base_prefix) / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    workdir = scratch / "app"
    for instruction, arguments in build[1:]:
        for container, local in paths.items():
            arguments = arguments.replace(container, local)
        if instruction == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(arguments)))
        elif instruction == "WORKDIR":
            workdir = Path(arguments)
        elif instruction == "COPY":
            *sources, target = shlex.split(arguments)
            destination = workdir / target
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():
                    shutil.copytree(origin, destination, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, destination / origin.name if target.endswith("/") else destination)
        elif instruction == "RUN":
            subprocess.run(["/bin/sh", "-c", arguments], cwd=workdir, env=env, check=True, capture_output=True)
        else:
            raise AssertionError(f"the build stage uses {instruction}, which this test does not carry out")
    return scratch


def test_the_image_runs_gunicorn_with_the_projects_config_as_an_unprivileged_user():
    build, final = dockerfile_stages()
    instructions = dict(final)
    assert re.fullmatch(r"[1-9]\d{3,}(:[1-9]\d{3,})?", instructions["USER"]), "a numeric, non-root user"
    assert json.loads(instructions["CMD"]) == [
        "gunicorn",
        "cvm_portal.wsgi:application",
        "--config",
        "gunicorn.conf.py",
    ]
    assert "scripts/ready_probe.py" in instructions["HEALTHCHECK"]
    final_runs = " ".join(arguments for instruction, arguments in final if instruction == "RUN")
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", final_runs), (
        "nothing built in the final stage"
    )
    assert build[0][1] == "${PYTHON_IMAGE} AS build", "both stages on the same Python"
    assert final[0][1] == "${PYTHON_IMAGE}"


def test_the_images_venv_is_the_runtime_only_and_passes_check_deploy(image):
    python = image / "venv" / "bin" / "python"
    app = image / "app"
    names = "import importlib.metadata as m; print(*(d.metadata['Name'].lower() for d in m.distributions()))"
    installed = subprocess.run(
        [python, "-c", names],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert not {"moto", "pytest", "playwright", "schemathesis", "hypothesis", "ruff", "pip"} & set(installed)
    assert {"django", "gunicorn", "boto3", "psycopg"} <= set(installed)

    check = subprocess.run(
        [python, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=app, env=production_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr

    config = subprocess.run(
        [python, "-m", "gunicorn", "--check-config", "--config", "gunicorn.conf.py", "cvm_portal.wsgi:application"],
        cwd=app, env=production_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert config.returncode == 0, config.stdout + config.stderr
    assert (app / "var" / "static" / "admin").is_dir(), "static files collected into the image"


def test_the_compose_file_follows_the_compose_specification():
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    document = yaml.safe_load(COMPOSE.read_text())

    validator = jsonschema.Draft7Validator(schema)  # its $schema is draft-07 without the trailing '#'
    validator.validate(document)
    assert not validator.is_valid({**document, "service": {}}), "the schema refuses what compose refuses"

    services = document["services"]
    assert {"proxy", "portal", "worker", "postgres", "redis"} <= services.keys()
    assert [name for name, service in services.items() if service.get("ports")] == ["proxy"], (
        "only the proxy faces clients"
    )
    proxy_address = services["proxy"]["networks"]["backend"]["ipv4_address"]
    assert services["portal"]["environment"]["CVM_TRUSTED_PROXY_ADDRESSES"] == proxy_address
    assert "cvm.env" in services["portal"]["env_file"]
    for template in (ROOT / "deploy" / "nginx" / "templates").glob("*.template"):
        named = set(re.findall(r"\$\{(\w+)\}", template.read_text()))
        assert named <= services["proxy"]["environment"].keys(), f"{template.name} names variables compose does not set"
