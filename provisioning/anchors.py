"""Audit anchors: the chain's head copied to an append-only place outside the database.

A sink or source is either a file path (one JSON line per anchor, opened O_APPEND; put it on storage
the database's administrators cannot write, or ship it on) or `s3://BUCKET/PREFIX` (one object per
anchor under S3 Object Lock in COMPLIANCE mode: nobody can change or delete it before it expires).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.conf import settings

from . import aws
from .audit import Anchor, audit_chain_pending, audit_head


class AnchorSinkInvalid(ValueError):
    """The sink or source cannot be used; the message says why."""


def _s3_location(location: str) -> tuple[str, str] | None:
    if not location.startswith("s3://"):
        return None
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    if not bucket:
        raise AnchorSinkInvalid(f"{location}: expected s3://BUCKET/PREFIX")
    return bucket, prefix


def anchor_write(*, sink: str) -> Anchor:
    """Chain what is pending, then append the chain's head to `sink`; returns it.

    A file sink is checked first: one that cannot be opened is refused before anything is chained.
    Raises AnchorSinkInvalid (the sink cannot be used), AuditChainBroken (the head does not match the
    chain), aws.AwsError (S3 did not take the anchor).
    """
    s3 = _s3_location(sink)
    if s3 is not None:
        audit_chain_pending()
        anchor = audit_head()
        aws.anchor_put(
            bucket=s3[0],
            prefix=s3[1],
            seq=anchor.seq,
            head=anchor.head,
            time=anchor.time,
            retention_days=settings.CVM_AUDIT_ANCHOR_RETENTION_DAYS,
        )
        return anchor
    path = Path(sink)
    fd: int | None = None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        # Created only once there is an anchor to write: a refused command leaves no file behind.
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
            raise AnchorSinkInvalid(f"cannot open {sink}: its directory is missing or not writable") from None
    except OSError as exc:
        raise AnchorSinkInvalid(f"cannot open {sink}: {exc.strerror}") from None
    try:
        audit_chain_pending()
        anchor = audit_head()
        line = json.dumps({"seq": anchor.seq, "head": anchor.head, "time": anchor.time}, sort_keys=True) + "\n"
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, line.encode())
        os.fsync(fd)
    except OSError as exc:  # a device or pipe that cannot keep it (/dev/null refuses fsync), a full disk
        raise AnchorSinkInvalid(f"cannot write {sink}: {exc.strerror}") from None
    finally:
        if fd is not None:
            os.close(fd)
    return anchor


def anchors_read(*, source: str) -> list[Anchor]:
    """Every anchor in `source`, as written by `anchor_write`."""
    s3 = _s3_location(source)
    if s3 is not None:
        return [Anchor(**entry) for entry in aws.anchors_list(bucket=s3[0], prefix=s3[1])]
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnchorSinkInvalid(f"cannot read {source}: {exc}") from None
    anchors = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            anchors.append(Anchor(seq=int(entry["seq"]), head=str(entry["head"]), time=str(entry.get("time", ""))))
        except (ValueError, KeyError, TypeError):
            raise AnchorSinkInvalid(f"{source} line {number} is not an anchor") from None
    return anchors
