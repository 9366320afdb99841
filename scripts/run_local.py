"""`make run`: the portal on https://127.0.0.1:8443/ with everything it needs, stopped by Ctrl-C.

With no AWS configured (no AWS_ENDPOINT_URL, AWS_PROFILE or AWS_ACCESS_KEY_ID in the environment) it
starts the local AWS emulator on 127.0.0.1:5000 and points the portal at it. Secrets, TLS material and
the SQLite database live in var/ and are reused on the next run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import processes
from scripts.local_tls import ensure_tls
from scripts.private_files import PRIVATE_UMASK, private_dir, tighten
from scripts.processes import PYTHON, ROOT, Children, emulator_command, gunicorn_command

VAR = ROOT / "var"
EMULATOR_PORT = 5000
PORTAL_BIND = os.environ.get("GUNICORN_BIND", "127.0.0.1:8443")


def secret_file(name: str) -> str:
    """A random secret kept in var/ (mode 0600), created on first use."""
    path = VAR / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def ensure_free(port: int, what: str) -> None:
    """Stop early and say why, rather than talk to whatever already holds the port."""
    if processes.port_in_use(port):
        raise SystemExit(f"port {port} is already in use; stop what holds it before starting {what}")


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
    try:
        processes.wait_for_port(port, what=what, timeout=timeout, process=process)
    except processes.ProcessExited as exc:
        raise SystemExit(str(exc)) from None
    except TimeoutError:
        raise SystemExit(f"{what} did not start listening on port {port}") from None


def prepare_var(var: Path) -> None:
    """var/ 0700 and everything already in it owner-only (the database, keys, logs of earlier runs)."""
    private_dir(var)
    tighten(var)


class Launcher:
    def __init__(self) -> None:
        # Each in a session of its own, so Ctrl-C reaches only us and we stop the children in order.
        self.children = Children()
        self.env = os.environ.copy()

    def start(self, what: str, args: list[str], *, log: Path | None = None) -> subprocess.Popen:
        return self.children.start(what, args, env=self.env, output=log)

    def manage(self, *args: str) -> None:
        processes.manage(self.env, *args, capture=False)

    def stop(self) -> None:
        self.children.stop()

    def write_local_env(self, embedded: bool) -> None:
        """var/local.env: what a second terminal sources to run management commands against this portal."""
        names = ["SECRET_KEY", "CVM_TOKEN_HMAC_KEY", "CVM_AUDIT_HMAC_KEY", "ALLOWED_HOSTS", "DATABASE_URL"]
        if embedded:
            names += ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]
        lines = [f"{name}={self.env[name]}" for name in names if name in self.env]
        fd = os.open(VAR / "local.env", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)  # an existing file keeps its mode through O_TRUNC
            handle.write("\n".join(lines) + "\n")

    def run(self) -> int:
        os.umask(PRIVATE_UMASK)
        prepare_var(VAR)
        self.env.setdefault("SECRET_KEY", secret_file("secret_key"))
        self.env.setdefault("CVM_TOKEN_HMAC_KEY", secret_file("token_hmac_key"))
        self.env.setdefault("CVM_AUDIT_HMAC_KEY", secret_file("audit_hmac_key"))
        # The worker anchors the audit chain's head here every few minutes (verify_audit --anchors).
        self.env.setdefault("CVM_AUDIT_ANCHOR_SINK", str(VAR / "audit-anchors.jsonl"))
        self.env.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")
        # HSTS pins a host to HTTPS for a year; not something to do to a developer's "localhost".
        self.env.setdefault("SECURE_HSTS_SECONDS", "0")
        # The local portal logs in with a password alone (said when it starts); production asks for TOTP.
        self.env.setdefault("CVM_ADMIN_2FA", "off")
        embedded = not any(name in os.environ for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"))
        if embedded:
            self.env["AWS_SECRET_ACCESS_KEY"] = "local"  # noqa: S105 - the emulator accepts any key
            self.env.update(
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{EMULATOR_PORT}",
                AWS_ACCESS_KEY_ID="local",
                AWS_REGION="us-east-1",
            )
            self.env.pop("AWS_SESSION_TOKEN", None)
        tls = ensure_tls(VAR / "tls")
        self.write_local_env(embedded)
        # gunicorn's workers share their Prometheus samples through files; stale ones must go.
        metrics_dir = VAR / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        self.env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))

        ensure_free(int(PORTAL_BIND.rsplit(":", 1)[1]), "the portal")
        if embedded:
            ensure_free(EMULATOR_PORT, "the AWS emulator")
            emulator = self.start("AWS emulator", emulator_command(EMULATOR_PORT), log=VAR / "emulator.log")
            wait_for_port(EMULATOR_PORT, emulator, "the AWS emulator")
        self.manage("migrate", "--noinput", "-v0")
        self.manage("collectstatic", "--noinput", "-v0")
        self.manage("bootstrap_aws")
        self.manage("ensure_admin")
        self.start("DynamoDB sync", [PYTHON, "manage.py", "sync_dynamodb"])
        # Imports confirmed in the admin run here, off the web request (a million rows take a minute).
        self.start("import worker", [PYTHON, "manage.py", "run_imports"])
        portal = self.start("portal", gunicorn_command(PORTAL_BIND, tls=tls))
        wait_for_port(int(PORTAL_BIND.rsplit(":", 1)[1]), portal, "the portal")
        aws_note = (
            f"local emulator on 127.0.0.1:{EMULATOR_PORT} (its state is lost when it stops)"
            if embedded
            else "from your environment"
        )
        print(
            f"\nCVM portal: https://{PORTAL_BIND}/  (admin at /admin/, API docs at /api/docs)\n"
            f"TLS CA to trust: {tls.ca_cert}\n"
            f"AWS: {aws_note}\n"
            + (
                "Staff log in with a password only (CVM_ADMIN_2FA=off, local use); production requires a TOTP code.\n"
                if self.env["CVM_ADMIN_2FA"].lower() in ("off", "0", "false", "no")
                else ""
            )
            + "Ctrl-C stops everything.\n",
            flush=True,
        )
        parent = os.getppid()
        while True:
            if os.getppid() != parent:
                # make (or the shell) that started us is gone: nobody is left to press Ctrl-C.
                print("parent process exited; stopping", file=sys.stderr)
                return 1
            exited = self.children.first_exited()
            if exited is not None:
                what, process = exited
                print(f"{what} exited with status {process.returncode}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)


def main() -> int:
    launcher = Launcher()

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Both explicitly: a shell that starts us in the background leaves SIGINT ignored otherwise.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        return launcher.run()
    except KeyboardInterrupt:
        print("\nstopping ...", file=sys.stderr)
        return 0
    except subprocess.CalledProcessError as exc:
        print(f"{' '.join(map(str, exc.cmd[1:3]))} failed with status {exc.returncode}", file=sys.stderr)
        return 1
    finally:
        launcher.stop()


if __name__ == "__main__":
    sys.exit(main())
