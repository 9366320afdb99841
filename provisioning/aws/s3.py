"""S3: the audit log's anchors, written under Object Lock so nobody can change or delete them.

Each anchor is its own object, `PREFIX<seq, 20 digits>-<head>.json`, so listing the prefix alone tells
every anchored (seq, head); the body adds the time. The bucket must have Object Lock enabled (S3 refuses
a retention date otherwise): https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from .clients import s3

ANCHOR_KEY_RE = re.compile(r"(?P<seq>\d{20})-(?P<head>[0-9a-f]{64})\.json\Z")


def anchor_put(*, bucket: str, prefix: str, seq: int, head: str, time: str, retention_days: int) -> str:
    """Write one anchor object in COMPLIANCE mode until now + `retention_days`; returns its key."""
    key = f"{prefix}{seq:020d}-{head}.json"
    s3(
        "PutObject",
        Bucket=bucket,
        Key=key,
        Body=json.dumps({"seq": seq, "head": head, "time": time}).encode(),
        ContentType="application/json",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=retention_days),
    )
    return key


def anchors_list(*, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every anchor under the prefix, oldest first, as {"seq", "head", "time"} (time: the object's date)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        response = s3("ListObjectsV2", **kwargs)
        for entry in response.get("Contents", []):
            match = ANCHOR_KEY_RE.search(entry["Key"])
            if match:
                modified = entry.get("LastModified")
                yield {
                    "seq": int(match["seq"]),
                    "head": match["head"],
                    "time": modified.isoformat() if modified else "",
                }
        if not response.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = response["NextContinuationToken"]
