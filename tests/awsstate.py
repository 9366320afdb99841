"""What AWS IoT and DynamoDB hold, read with plain boto3 clients: from in-process moto or a running emulator.

Tests check AWS through these and never through `provisioning.aws`: a check made with the portal's own
code would share its mistakes, wait on its quota governor and meet the faults a test injected into its
clients.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

REGION = "us-east-1"
_deserializer = TypeDeserializer()


@functools.cache
def session() -> boto3.session.Session:
    """One session for the whole run: each new one loads botocore's models again (~0.1 s a client pair)."""
    return boto3.session.Session(region_name=REGION)


@dataclass(frozen=True)
class AwsState:
    iot: Any
    dynamodb: Any

    @classmethod
    def connect(cls, endpoint_url: str | None = None) -> AwsState:
        """Clients for `endpoint_url` (an emulator), or for in-process moto while a mock is active."""
        return _connect(endpoint_url)

    def thing_certificates(self, thing_name: str) -> list[dict[str, Any]]:
        """The descriptions of the certificates attached to the thing; none when there is no such thing."""
        try:
            principals = self.iot.list_thing_principals(thingName=thing_name)["principals"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ResourceNotFoundException":
                return []
            raise
        return [
            self.iot.describe_certificate(certificateId=arn.rsplit("/", 1)[1])["certificateDescription"]
            for arn in principals
        ]

    def all_certificates(self) -> list[dict[str, Any]]:
        return self.iot.list_certificates()["certificates"]

    def active_certificates(self) -> list[dict[str, Any]]:
        return [c for c in self.all_certificates() if c["status"] == "ACTIVE"]

    def policies_of(self, certificate_arn: str) -> list[str]:
        return [p["policyName"] for p in self.iot.list_attached_policies(target=certificate_arn)["policies"]]

    def thing(self, thing_name: str) -> dict[str, Any]:
        return self.iot.describe_thing(thingName=thing_name)

    def table(self, table_name: str, *, key: str = "productId") -> dict[str, dict[str, Any]]:
        """Every item of the table by its key, as plain Python values (whole numbers as int)."""
        items: dict[str, dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"TableName": table_name, "ConsistentRead": True}
        while True:
            response = self.dynamodb.scan(**kwargs)
            for raw in response.get("Items", []):
                item = {name: _plain(_deserializer.deserialize(value)) for name, value in raw.items()}
                items[item[key]] = item
            if "LastEvaluatedKey" not in response:
                return items
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def _plain(value: Any) -> Any:
    # DynamoDB hands every number back as a Decimal; the portal writes whole numbers only.
    return int(value) if isinstance(value, Decimal) and value == value.to_integral_value() else value


@functools.cache
def _connect(endpoint_url: str | None) -> AwsState:
    # One pair of clients per endpoint for the whole run (~50 ms a client, in every test that uses moto).
    # A client holds no AWS state: each test's mock starts empty, and faults go on the portal's clients only.
    return AwsState(
        iot=session().client("iot", endpoint_url=endpoint_url),
        dynamodb=session().client("dynamodb", endpoint_url=endpoint_url),
    )
