"""Starting and stopping the portal's processes: `make run`, the end-to-end tests and the benchmarks.

Every child starts in a session of its own: stopping it stops what it started too (gunicorn's workers),
and a Ctrl-C in the terminal reaches only the launcher, which then stops the children in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType

from scripts.local_tls import TlsFiles

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LOCALHOST = "127.0.0.1"


class ProcessExited(RuntimeError):
    """A child died while we were waiting for it to come up."""


def free_port() -> int:
    """A port nothing listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], object],
    *,
    what: str,
    timeout: float = 30.0,
    process: subprocess.Popen | None = None,
    interval: float = 0.1,
) -> None:
    """Poll `check` until it returns something true; an OSError (nothing listening yet) counts as not yet.

    With `process`, give up as soon as it exits: waiting out the timeout for a dead server only hides
    why it died.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ProcessExited(f"{what} exited with status {process.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(interval)


def wait_for_port(port: int, *, what: str = "", timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    def listening() -> bool:
        with socket.create_connection((LOCALHOST, port), timeout=0.5):
            return True

    wait_until(listening, what=what or f"port {port}", timeout=timeout, process=process)


def wait_for_url(
    url: str, *, cafile: Path, what: str = "", timeout: float = 30.0, process: subprocess.Popen | None = None
) -> None:
    """Wait until a GET of `url` over TLS, verified against `cafile`, answers 200."""
    context = ssl.create_default_context(cafile=str(cafile))

    def answers() -> bool:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:  # noqa: S310 - our own https URL
            return response.status == 200

    wait_until(answers, what=what or url, timeout=timeout, process=process)


def child_env(drop: Iterable[str] = (), **values: str) -> dict[str, str]:
    """This process's environment without the variables starting with any of `drop`, plus `values`.

    Children must not inherit what points the parent elsewhere (its database, its AWS endpoint).
    """
    prefixes = tuple(drop)
    env = {key: value for key, value in os.environ.items() if not (prefixes and key.startswith(prefixes))}
    env.update(values)
    return env


def manage(env: Mapping[str, str], *args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """`manage.py ARGS` in a process of its own, with `env` as its whole environment; fails if it does."""
    return subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=dict(env), capture_output=capture, text=True, check=True
    )


def emulator_command(port: int) -> list[str]:
    return [PYTHON, "-m", "scripts.emulator", "--port", str(port)]


def gunicorn_command(
    bind: str, *, tls: TlsFiles | None = None, workers: int | None = None, threads: int | None = None
) -> list[str]:
    """The portal under gunicorn with the project's configuration; TLS when `tls` is given."""
    command = [
        PYTHON, "-m", "gunicorn", "cvm_portal.wsgi:application",
        "--config", str(ROOT / "gunicorn.conf.py"),
        "--bind", bind,
    ]  # fmt: skip
    if workers is not None:
        command += ["--workers", str(workers)]
    if threads is not None:
        command += ["--threads", str(threads)]
    if tls is not None:
        command += ["--certfile", str(tls.server_cert), "--keyfile", str(tls.server_key)]
    return command


class Children:
    """Processes started together and stopped together, the last started first.

    A context manager: leaving the block stops them all, whatever happened inside it.
    """

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(
        self, what: str, args: list[str], *, env: Mapping[str, str], output: Path | int | None = subprocess.DEVNULL
    ) -> subprocess.Popen:
        """Start `args` in ROOT. `output`: a file to append stdout and stderr to, DEVNULL, or None to inherit."""
        stream = open(output, "ab") if isinstance(output, Path) else output  # noqa: SIM115 - the child's now
        try:
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=dict(env),
                start_new_session=True,
                stdout=stream,
                stderr=None if output is None else subprocess.STDOUT,
            )
        finally:
            if isinstance(output, Path):
                stream.close()  # the child holds its own copy of the descriptor
        self.running.append((what, process))
        return process

    def first_exited(self) -> tuple[str, subprocess.Popen] | None:
        return next(((what, process) for what, process in self.running if process.poll() is not None), None)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to each child's process group, last started first; SIGKILL for those still there after `timeout`."""
        for _, process in reversed(self.running):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for what, process in reversed(self.running):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{what} did not stop in time; killing it", file=sys.stderr)
                _signal_group(process, signal.SIGKILL)
                process.wait()
        self.running.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    if process.poll() is not None:
        return  # reaped: its process id may already belong to someone else
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, signum)
