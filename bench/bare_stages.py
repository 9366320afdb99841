"""The AWS IoT stages of a vend, done by bare boto3: the yardstick `stages` subtracts from a vend.

The same calls `provisioning.aws.certificate_provision` makes for a device without a CSR, thing type or
thing groups, grouped as it groups them, the calls of a stage concurrent on a thread pool made once (as
the portal's is):

  1. CreateThing | CreateKeysAndCertificate | ListThingPrincipals
  2. AttachPolicy | AttachThingPrincipal
  3. UpdateCertificate (ACTIVE)

DescribeEndpoint is left out: the portal makes it once per process and caches the answer. Stray
certificates cost nothing here either: the fake AWS IoT lists none, so the portal revokes none. What is
left out on purpose is everything that is the portal's own: the quota governor, metrics, error
translation, the dataclasses.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

# As `provisioning.aws.clients._config` builds it with the settings' defaults.
CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 3},
    connect_timeout=3.0,
    read_timeout=10.0,
    max_pool_connections=64,
)


def iot_client(endpoint_url: str) -> Any:
    session = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench")  # noqa: S106
    return session.client("iot", region_name="us-east-1", endpoint_url=endpoint_url, config=CONFIG)


class BareStages:
    """`run()` makes one vend's AWS IoT calls; the client and the pool are made once, as the portal's are."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="bare-aws")

    def run(self, *, thing_name: str, attributes: dict[str, str], policy_name: str) -> None:
        iot, pool = self.client, self.pool
        payload = {"attributes": attributes, "merge": True}
        thing = pool.submit(iot.create_thing, thingName=thing_name, attributePayload=payload)
        certificate = pool.submit(iot.create_keys_and_certificate, setAsActive=False)
        principals = pool.submit(iot.list_thing_principals, thingName=thing_name)
        arn = certificate.result()["certificateArn"]
        certificate_id = certificate.result()["certificateId"]
        thing.result()
        principals.result()
        attached = [
            pool.submit(iot.attach_policy, policyName=policy_name, target=arn),
            pool.submit(iot.attach_thing_principal, thingName=thing_name, principal=arn),
        ]
        for future in attached:
            future.result()
        iot.update_certificate(certificateId=certificate_id, newStatus="ACTIVE")

    def close(self) -> None:
        self.pool.shutdown()
