"""What a device's page shows, for incident work: only what its state makes meaningful, only links the
role may follow.

A token's expiry means something while the device waits for its certificate, not once it is active; a
rotation in progress has a deadline; a revoked certificate has who and why. The row's bookkeeping
(version, claim id, clean-up flag) is for operators, shown to superusers only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.urls import reverse
from django.utils.http import urlencode

from ..models import Certificate, Device, DeviceAction, DeviceState
from ..templatetags.cvm import moment


@dataclass(frozen=True)
class Fact:
    label: str
    value: Any
    url: str = ""
    warning: str = ""


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    facts: list[Fact] = field(default_factory=list)


def certificate_url(user: Any, certificate: Certificate | None) -> str:
    if certificate is None or not user.has_perm("provisioning.view_certificate"):
        return ""
    return reverse("admin:provisioning_certificate_change", args=[certificate.pk])


def device_certificates_url(user: Any, serial: str) -> str:
    if not user.has_perm("provisioning.view_certificate"):
        return ""
    return reverse("admin:provisioning_certificate_changelist") + "?" + urlencode({"device__serial": serial})


def device_events_url(user: Any, serial: str) -> str:
    if not user.has_perm("provisioning.view_auditevent"):
        return ""
    return reverse("admin:provisioning_auditevent_changelist") + "?" + urlencode({"serial": serial})


def rotation_due_at(certificate: Certificate | None) -> datetime | None:
    """When the certificate should be rotated (CVM_ROTATE_AFTER_DAYS after issue), or None when never."""
    days = settings.CVM_ROTATE_AFTER_DAYS
    if certificate is None or not days:
        return None
    return certificate.issued_at + timedelta(days=days)


def rotation_confirm_by(pending: Certificate) -> datetime:
    return pending.issued_at + timedelta(seconds=settings.CVM_ROTATION_GRACE_SECONDS)


def device_sections(device: Device, *, user: Any, now: datetime) -> list[Section]:
    sections = [_device(device, user)]
    if device.allows(DeviceAction.VEND):
        expired = device.token_expires_at is not None and device.token_expires_at <= now
        sections.append(
            Section(
                "token",
                "Registration token",
                [
                    Fact("issued", moment(device.token_issued_at)),
                    Fact(
                        "expires",
                        moment(device.token_expires_at),
                        warning="expired: issue a new token" if expired else "",
                    ),
                ],
            )
        )
    if device.state == DeviceState.ISSUING:
        sections.append(
            Section(
                "issuing",
                "Being issued a certificate",
                [
                    Fact("since", moment(device.claimed_at)),
                    Fact("recovered if stuck after", f"{settings.CVM_CLAIM_TIMEOUT_SECONDS} s"),
                ],
            )
        )
    if device.current_certificate is not None:
        sections.append(_certificate(device, user, now))
    if device.pending_certificate is not None:
        pending = device.pending_certificate
        confirm_by = rotation_confirm_by(pending)
        sections.append(
            Section(
                "rotation",
                "Rotation in progress",
                [
                    Fact("new certificate", pending.certificate_id, url=certificate_url(user, pending)),
                    Fact("started", moment(pending.issued_at)),
                    Fact(
                        "confirm by",
                        moment(confirm_by),
                        warning="overdue: the worker rolls it back" if confirm_by <= now else "",
                    ),
                ],
            )
        )
    if user.is_superuser:
        sections.append(
            Section(
                "internals",
                "Internals",
                [
                    Fact("version", device.version),
                    Fact("claim", device.claim_id or "-"),
                    Fact("claimed", moment(device.claimed_at)),
                    Fact("AWS clean-up pending", "yes" if device.aws_cleanup_pending else "no"),
                ],
            )
        )
    return sections


def _device(device: Device, user: Any) -> Section:
    product_url = (
        reverse("admin:provisioning_product_change", args=[device.product_id])
        if user.has_perm("provisioning.view_product")
        else ""
    )
    facts = [
        Fact("serial", device.serial),
        Fact("product", device.product.name, url=product_url),
        Fact("state", device.get_state_display()),
        *(Fact(f"attribute {name}", value) for name, value in sorted(device.attributes.items())),
    ]
    if device.current_certificate_id or device.state == DeviceState.ISSUING:
        facts.append(Fact("thing", device.thing_name))
    facts += [Fact("registered", moment(device.created_at)), Fact("last change", moment(device.updated_at))]
    if device.last_request_at:
        facts.append(Fact("last request from the device", moment(device.last_request_at)))
    return Section("device", "Device", facts)


def _certificate(device: Device, user: Any, now: datetime) -> Section:
    certificate = device.current_certificate
    facts = [
        Fact("certificate", certificate.certificate_id, url=certificate_url(user, certificate)),
        Fact("status", certificate.get_status_display()),
        Fact("key", certificate.get_key_origin_display()),
        Fact("issued", moment(certificate.issued_at)),
        Fact("SHA-256 fingerprint", certificate.fingerprint_sha256),
    ]
    if certificate.revoked_at:
        facts += [
            Fact("revoked", moment(certificate.revoked_at)),
            Fact("revoked by", certificate.revoked_by),
            Fact("reason", certificate.revoked_reason),
        ]
    due = rotation_due_at(certificate) if device.allows(DeviceAction.ROTATE) else None
    if due is not None:
        facts.append(Fact("rotation due", moment(due), warning="due now" if due <= now else ""))
    return Section("certificate", "Certificate", facts)
