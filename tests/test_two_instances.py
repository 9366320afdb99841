"""Two gunicorn instances, one PostgreSQL database, one Redis and one AWS emulator: the portal holds no
state of its own, a token still issues exactly one certificate, and the AWS quota is shared.

Runs where DATABASE_URL names PostgreSQL and Redis answers on 127.0.0.1:6379 (`.ci/run` does both).
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from provisioning import services
from scripts.local_tls import ensure_tls
from scripts.processes import (
    Children,
    child_env,
    emulator_command,
    free_port,
    gunicorn_command,
    manage,
    port_in_use,
    wait_for_port,
    wait_for_url,
)

from .awsstate import AwsState

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
        reason="needs DATABASE_URL pointing at PostgreSQL",
    ),
    pytest.mark.skipif(not port_in_use(6379), reason="needs Redis on 127.0.0.1:6379"),
]

RATE = 4  # CreateKeysAndCertificate calls per second, for the whole account


def post(url: str, ca: Path, body: dict) -> int:
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
    aws_endpoint = f"http://127.0.0.1:{aws_port}"
    env = child_env(
        drop=("AWS_", "DATABASE_URL"),
        DATABASE_URL=database_url,
        CACHE_URL="redis://127.0.0.1:6379/15",
        AWS_ENDPOINT_URL=aws_endpoint,
        AWS_ACCESS_KEY_ID="two",
        AWS_SECRET_ACCESS_KEY="two",
        AWS_DEFAULT_REGION="us-east-1",
        # The quota under test: this replaces the suite's CVM_AWS_RATES=off.
        CVM_AWS_RATES=f"CreateKeysAndCertificate={RATE}",
        CVM_AWS_QUEUE_SECONDS="30",
    )
    try:
        with Children() as children:
            emulator = children.start("AWS emulator", emulator_command(aws_port), env=env)
            wait_for_port(aws_port, what="the AWS emulator", process=emulator)
            manage(env, "bootstrap_aws")
            instances = {}
            for _ in range(2):
                bind = f"127.0.0.1:{free_port()}"
                instances[f"https://{bind}"] = children.start(
                    "portal", gunicorn_command(bind, tls=tls, workers=2, threads=8), env=env
                )
            for url, instance in instances.items():
                wait_for_url(url + "/api/v1/health", cafile=tls.ca_cert, what="the portal", process=instance)
            urls = list(instances)

            serials = [f"TWO-{i}" for i in range(10)]
            services.devices_import(
                rows=[services.ImportRow(line=2, serial=s, product="two") for s in serials], actor="t"
            )
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
                rest = list(
                    pool.map(
                        lambda s: post(urls[int(s[-1]) % 2], tls.ca_cert, {"serial": s, "token": tokens[s]}),
                        serials[1:],
                    )
                )
            elapsed = time.monotonic() - started
            assert rest == [201] * 9
            # 10 creations at 4/s with a burst of 4 take at least (10 - 4) / 4 = 1.5 s when the quota is
            # shared; two separate quotas would let them through in about a quarter of that.
            assert elapsed >= 1.2, f"nine vends took only {elapsed:.2f} s: the quota was not shared"

            aws = AwsState.connect(aws_endpoint)
            for serial in serials:
                certificates = aws.thing_certificates(serial)
                assert len(certificates) == 1, f"{serial}: {certificates}"
    finally:
        redis.Redis(db=15).flushdb()
