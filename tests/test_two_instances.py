"""Two gunicorn instances, one PostgreSQL database, one Redis and one AWS emulator: the portal holds no
state of its own, a token still issues exactly one certificate, and the AWS quota is shared.

Runs where DATABASE_URL names PostgreSQL and Redis answers on 127.0.0.1:6379 (`.ci/run` does both).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from django.db import connection

from provisioning import services
from scripts.local_tls import ensure_tls

from .test_e2e import free_port, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def redis_available() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
        return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
        reason="needs DATABASE_URL pointing at PostgreSQL",
    ),
    pytest.mark.skipif(not redis_available(), reason="needs Redis on 127.0.0.1:6379"),
]

RATE = 4  # CreateKeysAndCertificate calls per second, for the whole account


def post(url: str, ca: Path, body: dict) -> int:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url + "/api/v1/certificates", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(ca)), timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


def test_two_instances_share_the_database_and_the_quota(transactional_db, tmp_path):
    import redis

    redis.Redis(db=15).flushdb()
    tls = ensure_tls(tmp_path / "tls")
    database = connection.settings_dict
    database_url = (
        f"postgres://{database['USER'] or 'postgres'}@{database['HOST'] or '127.0.0.1'}:{database['PORT'] or 5432}/"
        f"{database['NAME']}"
    )
    aws_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=database_url,
        CACHE_URL="redis://127.0.0.1:6379/15",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{aws_port}",
        AWS_ACCESS_KEY_ID="two",
        AWS_SECRET_ACCESS_KEY="two",
        AWS_DEFAULT_REGION="us-east-1",
        CVM_AWS_RATES=f"CreateKeysAndCertificate={RATE}",
        CVM_AWS_QUEUE_SECONDS="30",
    )
    processes = []
    try:
        processes.append(subprocess.Popen([PYTHON, "-m", "scripts.emulator", "--port", str(aws_port)], cwd=ROOT,
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        wait_until(lambda: socket.create_connection(("127.0.0.1", aws_port), timeout=1).close() is None)
        subprocess.run([PYTHON, "manage.py", "bootstrap_aws"], cwd=ROOT, env=env, check=True, capture_output=True)
        urls = []
        for _ in range(2):
            port = free_port()
            processes.append(
                subprocess.Popen(
                    [PYTHON, "-m", "gunicorn", "cvm_portal.wsgi:application", "--config", "gunicorn.conf.py",
                     "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "8",
                     "--certfile", str(tls.server_cert), "--keyfile", str(tls.server_key)],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            urls.append(f"https://127.0.0.1:{port}")
        for url in urls:
            wait_until(lambda url=url: post(url, tls.ca_cert, {}) == 400)

        serials = [f"TWO-{i}" for i in range(10)]
        services.devices_import(rows=[services.ImportRow(line=2, serial=s, product="two") for s in serials], actor="t")
        tokens = {t.serial: t.token for t in services.tokens_issue(serials=serials, actor="t")}

        # The same token at both instances at once: exactly one certificate.
        body = {"serial": "TWO-0", "token": tokens["TWO-0"]}
        with ThreadPoolExecutor(12) as pool:
            same = list(pool.map(lambda i: post(urls[i % 2], tls.ca_cert, body), range(12)))
        assert same.count(201) == 1, same
        assert set(same) <= {201, 403, 409}, same

        # Nine more devices, spread over both instances: one quota for the account, not one each.
        started = time.monotonic()
        with ThreadPoolExecutor(9) as pool:
            rest = list(pool.map(lambda s: post(urls[int(s[-1]) % 2], tls.ca_cert, {"serial": s, "token": tokens[s]}),
                                 serials[1:]))  # fmt: skip
        elapsed = time.monotonic() - started
        assert rest == [201] * 9
        # 10 creations at 4/s with a burst of 4 take at least (10 - 4) / 4 = 1.5 s when the quota is
        # shared; two separate quotas would let them through in about a quarter of that.
        assert elapsed >= 1.2, f"nine vends took only {elapsed:.2f} s: the quota was not shared"

        iot = boto3.client("iot", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                           aws_access_key_id="two", aws_secret_access_key="two")  # fmt: skip
        for serial in serials:
            principals = iot.list_thing_principals(thingName=serial)["principals"]
            assert len(principals) == 1, f"{serial}: {principals}"
    finally:
        stop(processes)
        redis.Redis(db=15).flushdb()
