"""DynamoDB: the association table. Every call goes through `clients.dynamodb`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from .clients import CONDITION_FAILED, MISSING, SERVICE_NAMES, AwsRejected, AwsUnavailable, dynamodb

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()
TABLE_READY_SECONDS = 60


def _item(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(value) for key, value in item.items() if value is not None}


def table_ensure(*, table_name: str) -> bool:
    """Create the association table (on-demand billing) when missing; True when it was created.

    Waits until DynamoDB reports it ACTIVE (DescribeTable polled once a second, at most a minute; the
    boto3 waiter would do the same, but outside the wrapper that meters and translates every call).
    """
    try:
        dynamodb("DescribeTable", TableName=table_name, expected=MISSING)
        return False
    except AwsRejected as exc:
        if exc.code not in MISSING:
            raise
    dynamodb(
        "CreateTable",
        TableName=table_name,
        AttributeDefinitions=[{"AttributeName": "productId", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "productId", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    deadline = time.monotonic() + TABLE_READY_SECONDS
    while dynamodb("DescribeTable", TableName=table_name)["Table"].get("TableStatus") != "ACTIVE":
        if time.monotonic() > deadline:
            raise AwsUnavailable("TableNotActive", "DescribeTable", service=SERVICE_NAMES["dynamodb"])
        time.sleep(1)
    return True


def association_put(*, table_name: str, item: dict[str, Any]) -> bool:
    """Write an item unless the table already holds the same or a newer version; False when it did."""
    try:
        dynamodb(
            "PutItem",
            expected=CONDITION_FAILED,
            TableName=table_name,
            Item=_item(item),
            ConditionExpression="attribute_not_exists(productId) OR version < :version",
            ExpressionAttributeValues={":version": _serializer.serialize(item["version"])},
        )
        return True
    except AwsRejected as exc:
        if exc.code in CONDITION_FAILED:
            return False
        raise


def association_replace(*, table_name: str, item: dict[str, Any]) -> None:
    """Write an item whatever the table holds (reconcile: the database wins)."""
    dynamodb("PutItem", TableName=table_name, Item=_item(item))


def association_delete(*, table_name: str, serial: str) -> None:
    dynamodb("DeleteItem", TableName=table_name, Key={"productId": {"S": serial}})


def table_scan(*, table_name: str) -> Iterator[dict[str, Any]]:
    """Every item of a DynamoDB table, as plain Python values (numbers as int)."""
    kwargs: dict[str, Any] = {"TableName": table_name, "ConsistentRead": True}
    while True:
        response = dynamodb("Scan", **kwargs)
        for raw in response.get("Items", []):
            item = {key: _deserializer.deserialize(value) for key, value in raw.items()}
            yield {key: int(value) if type(value).__name__ == "Decimal" else value for key, value in item.items()}
        if "LastEvaluatedKey" not in response:
            return
        kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
