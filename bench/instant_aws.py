"""AWS IoT that answers at once, in the process: what the portal itself costs, without AWS's latency.

Only for the benchmark programs, which run in processes of their own (`bench.run` starts them).
"""

from __future__ import annotations

import uuid

from bench.fake_iot import _certificate


def answer_at_once() -> None:
    """Replace the AWS IoT calls of a vend in `provisioning.aws` with an immediate, well-formed answer."""
    from provisioning import aws

    pem, key = _certificate()
    aws.certificate_provision = lambda **_: aws.NewCertificate(
        certificate_id=uuid.uuid4().hex * 2,
        arn="arn:aws:iot:us-east-1:1:cert/x",
        certificate_pem=pem,
        private_key_pem=key,
    )
    aws.iot_data_endpoint = lambda: "bench-ats.iot.us-east-1.amazonaws.com"
