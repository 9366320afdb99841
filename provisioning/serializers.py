"""Input and output shapes of the device API and the staff API."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .crypto import MAX_CSR_BYTES, CsrInvalid, csr_validate
from .models import AuditKind, DeviceState
from .proofs import MAX_PROOF_BYTES
from .services import DEFAULT_PRODUCT, ImportRow
from .validators import (
    DEVICE_ATTRIBUTES_MAX,
    PRODUCT_NAME_MAX,
    PRODUCT_NAME_MESSAGE,
    PRODUCT_NAME_RE,
    SERIAL_MESSAGE,
    SERIAL_PATTERN,
    SERIAL_RE,
    TOKEN_TTL_MAX_DAYS,
    TOKEN_TTL_MIN_DAYS,
    InputInvalid,
    attributes_check,
    token_ttl_check,
)

NOT_A_STRING = "must be a JSON string"


class JsonStringMixin:
    """Refuse every JSON type but a string: DRF's CharField turns 123456 into "123456" (and 42 would
    then miss device "0042" and count as a failed token). A device that sends a number has a bug the
    400 should name, not a guess the portal makes for it."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError(NOT_A_STRING, code="invalid")
        return super().to_internal_value(data)  # type: ignore[misc]


class StringField(JsonStringMixin, serializers.CharField):
    """A CharField that takes only JSON strings."""


class SerialField(JsonStringMixin, serializers.RegexField):
    """The one serial field of every JSON input: a JSON string matching the serial rule (SPEC §3)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 64)
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("error_messages", {"invalid": SERIAL_MESSAGE})
        super().__init__(SERIAL_PATTERN, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        # The schema's pattern uses `$`, which Python lets match before a trailing newline; \Z does not.
        if not SERIAL_RE.match(value):
            self.fail("invalid")
        return value


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo in a device's firmware is caught, not ignored."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name[:64]: ["unknown field"] for name in unknown[:10]})
        return attrs


class VendInputSerializer(StrictSerializer):
    serial = SerialField()
    token = StringField(max_length=128, trim_whitespace=False)
    csr = StringField(
        required=False,
        max_length=MAX_CSR_BYTES,
        trim_whitespace=False,
        help_text="PEM PKCS#10 request (label CERTIFICATE REQUEST or NEW CERTIFICATE REQUEST); RSA 2048-8192 "
        "bits or EC P-256/P-384/P-521, signed with SHA-256/384/512, subject CN equal to the serial",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        csr = attrs.get("csr")
        if csr is None:
            if settings.CVM_REQUIRE_CSR:
                raise serializers.ValidationError({"csr": ["a CSR is required: generate the key on the device"]})
            attrs["validated_csr"] = None
            return attrs
        attrs["validated_csr"] = _validated_csr(attrs)
        return attrs


def _validated_csr(attrs: dict[str, Any]) -> Any:
    try:
        return csr_validate(attrs["csr"], serial=attrs["serial"])
    except CsrInvalid as exc:
        raise serializers.ValidationError({"csr": [str(exc)]}) from None


class RotateInputSerializer(StrictSerializer):
    serial = SerialField()
    csr = StringField(max_length=MAX_CSR_BYTES, trim_whitespace=False, help_text="PEM PKCS#10 request for a new key")
    proof = StringField(
        max_length=MAX_PROOF_BYTES,
        trim_whitespace=False,
        help_text="JWT (JWS compact) signed by the current key: sub, aud=cvm-rotate, iat, jti, csr_sha256",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        attrs["validated_csr"] = _validated_csr(attrs)
        return attrs


class ConfirmInputSerializer(StrictSerializer):
    serial = SerialField()
    proof = StringField(
        max_length=MAX_PROOF_BYTES,
        trim_whitespace=False,
        help_text="JWT signed by the new key: sub, aud=cvm-confirm, iat, jti",
    )


class VendOutputSerializer(serializers.Serializer):
    """The certificate answer; built from the service's VendResult."""

    serial = serializers.CharField()
    thing_name = serializers.CharField()
    certificate_id = serializers.CharField()
    certificate_arn = serializers.CharField()
    certificate_pem = serializers.CharField()
    private_key_pem = serializers.CharField(required=False, help_text="only when no CSR was sent")
    iot_endpoint = serializers.CharField(help_text="the account's iot:Data-ATS endpoint")
    root_ca_pem = serializers.CharField(help_text="Amazon Root CA 1")
    rotate_after = serializers.DateTimeField(
        required=False, help_text="ISO 8601 UTC; only when the device's product asks for rotation after N days"
    )

    def to_representation(self, instance: Any) -> dict[str, Any]:
        body = super().to_representation(instance)
        for optional in ("private_key_pem", "rotate_after"):
            if body.get(optional) is None:
                body.pop(optional, None)  # never null: absent when it does not apply
        return body


class RotateOutputSerializer(VendOutputSerializer):
    """The rotation answer: the new certificate, the one it replaces, and when it must be confirmed."""

    previous_certificate_id = serializers.CharField()
    confirm_by = serializers.DateTimeField(help_text="ISO 8601 UTC; unconfirmed by then, the rotation is rolled back")

    def to_representation(self, instance: Any) -> dict[str, Any]:
        body = dict(VendOutputSerializer(instance.certificate).data)
        body["previous_certificate_id"] = instance.previous_certificate_id
        body["confirm_by"] = self.fields["confirm_by"].to_representation(instance.confirm_by)
        return body


class ConfirmOutputSerializer(serializers.Serializer):
    serial = serializers.CharField()
    certificate_id = serializers.CharField()
    revoked_certificate_id = serializers.CharField()


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


class HealthSerializer(serializers.Serializer):
    status = serializers.CharField()


class ReadySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "unavailable"])
    failed = serializers.ListField(child=serializers.ChoiceField(choices=["database", "cache", "aws"]))
    checks = serializers.DictField(child=serializers.CharField(), help_text='each part: "ok" or why it failed')


class LegacyInputSerializer(serializers.Serializer):
    """The reference CVM's two fields, under the same serial rule as the portal's own API."""

    serialNumber = SerialField()
    deviceToken = StringField(max_length=256, trim_whitespace=False)


# --- Staff API (SPEC §9) --------------------------------------------------------------------------

# One request registers or issues tokens for at most this many devices; the body limit for these calls
# (CVM_API_BULK_MAX_BODY_BYTES, 16 MiB) holds 100,000 entries with a serial and a product.
MAX_BULK_ENTRIES = 100_000
NOT_AN_INTEGER = "must be a JSON integer"


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer and nothing else: DRF's IntegerField takes "30", 30.0 and true (as 1)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError(NOT_AN_INTEGER, code="invalid")
        return data


class TtlDaysField(StrictIntegerField):
    """A token lifetime: the one rule of every path, 1 to 3650 whole days."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", "token lifetime in days, 1 to 3650 (default CVM_TOKEN_TTL_DAYS)")
        super().__init__(min_value=TOKEN_TTL_MIN_DAYS, max_value=TOKEN_TTL_MAX_DAYS, **kwargs)

    def to_internal_value(self, data: Any) -> int:
        value = super().to_internal_value(data)
        try:
            return token_ttl_check(value)
        except InputInvalid as exc:
            raise serializers.ValidationError(str(exc), code="invalid") from None


def _entry_problems(entry: Any) -> tuple[dict[str, list[str]], ImportRow | None]:
    """What is wrong with one entry of a registration, by field; or the row it makes."""
    if not isinstance(entry, dict):
        return {"non_field_errors": ["must be a JSON object with a serial"]}, None
    problems: dict[str, list[str]] = {}
    for name in sorted(set(entry) - {"serial", "product", "attributes"})[:10]:
        problems[str(name)[:64]] = ["unknown field"]
    serial = entry.get("serial")
    if "serial" not in entry:
        problems["serial"] = ["This field is required."]
    elif not isinstance(serial, str):
        problems["serial"] = [NOT_A_STRING]
    elif not SERIAL_RE.match(serial):
        problems["serial"] = [SERIAL_MESSAGE]
    product = entry.get("product", DEFAULT_PRODUCT)
    if not isinstance(product, str):
        problems["product"] = [NOT_A_STRING]
    elif not PRODUCT_NAME_RE.match(product):
        problems["product"] = [PRODUCT_NAME_MESSAGE]
    attributes = entry.get("attributes", {})
    if not isinstance(attributes, dict):
        problems["attributes"] = ["must be a JSON object of attribute names and string values"]
    elif not all(isinstance(value, str) for value in attributes.values()):
        problems["attributes"] = [f"each value {NOT_A_STRING}"]
    else:
        try:
            attributes_check(attributes)
        except InputInvalid as exc:
            problems["attributes"] = [str(exc)]
    if problems:
        return problems, None
    return {}, ImportRow(line=0, serial=serial, product=product, attributes=attributes)


class BulkListField(serializers.Field):
    """A JSON list of 1 to MAX_BULK_ENTRIES entries, checked entry by entry without building a serializer
    per entry (100,000 of those take a minute); errors are DRF's list shape: {index: problems}."""

    def check_list(self, data: Any) -> list[Any]:
        if not isinstance(data, list):
            raise serializers.ValidationError("must be a JSON list", code="invalid")
        if not data:
            raise serializers.ValidationError("must name at least one device", code="empty")
        if len(data) > MAX_BULK_ENTRIES:
            raise serializers.ValidationError(
                f"at most {MAX_BULK_ENTRIES} entries per request, not {len(data)}; send several requests",
                code="max_length",
            )
        return data


class DeviceEntriesField(BulkListField):
    def to_internal_value(self, data: Any) -> list[ImportRow]:
        errors: dict[int, Any] = {}
        rows: list[ImportRow] = []
        seen: dict[str, int] = {}
        for index, entry in enumerate(self.check_list(data)):
            problems, row = _entry_problems(entry)
            if row is not None and row.serial in seen:
                problems = {"serial": [f"serial {row.serial} repeats entry {seen[row.serial]}"]}
            if problems:
                errors[index] = problems
                continue
            assert row is not None
            seen[row.serial] = index
            rows.append(ImportRow(line=index, serial=row.serial, product=row.product, attributes=row.attributes))
        if errors:
            raise serializers.ValidationError(errors)
        return rows


class SerialListField(BulkListField):
    def to_internal_value(self, data: Any) -> list[str]:
        errors: dict[int, list[str]] = {}
        seen: dict[str, int] = {}
        for index, serial in enumerate(self.check_list(data)):
            if not isinstance(serial, str):
                errors[index] = [NOT_A_STRING]
            elif not SERIAL_RE.match(serial):
                errors[index] = [SERIAL_MESSAGE]
            elif serial in seen:
                errors[index] = [f"serial {serial} repeats entry {seen[serial]}"]
            else:
                seen[serial] = index
        if errors:
            raise serializers.ValidationError(errors)
        return list(seen)


class DeviceEntrySerializer(serializers.Serializer):
    """One device to register (documentation of DeviceEntriesField's entries)."""

    serial = serializers.CharField(help_text=SERIAL_MESSAGE)
    product = serializers.CharField(required=False, help_text="product name (default: default)")
    attributes = serializers.DictField(
        child=serializers.CharField(),
        required=False,
        help_text="the thing's own attributes, name -> value (AWS IoT's rules; at most "
        f"{DEVICE_ATTRIBUTES_MAX} beside serial and product)",
    )


@extend_schema_field(DeviceEntrySerializer(many=True))
class _DocumentedDeviceEntries(DeviceEntriesField):
    pass


@extend_schema_field({"type": "array", "items": {"type": "string", "pattern": SERIAL_PATTERN}, "minItems": 1})
class _DocumentedSerials(SerialListField):
    pass


class DeviceRegisterInputSerializer(StrictSerializer):
    devices = _DocumentedDeviceEntries(
        help_text=f"1 to {MAX_BULK_ENTRIES} devices; all are registered or none; known serials are left as they are"
    )


class DeviceRegisterOutputSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="serials registered now")
    existing = serializers.IntegerField(help_text="serials that were already registered (left as they are)")


class TokensInputSerializer(StrictSerializer):
    serials = _DocumentedSerials(help_text=f"1 to {MAX_BULK_ENTRIES} serials; each gets a token, or none does")
    ttl_days = TtlDaysField()


class IssuedTokenSerializer(serializers.Serializer):
    serial = serializers.CharField()
    token = serializers.CharField(help_text="the one-time registration token: shown only in this answer")
    expires_at = serializers.DateTimeField()


class TokensOutputSerializer(serializers.Serializer):
    tokens = IssuedTokenSerializer(many=True)


class RevokeInputSerializer(StrictSerializer):
    reason = StringField(max_length=255, help_text="why, for the audit log and the certificate history")


class ResetInputSerializer(StrictSerializer):
    reason = StringField(max_length=255, required=False, help_text="why, for the audit log (default: reset)")
    ttl_days = TtlDaysField()


class CertificateOutputSerializer(serializers.Serializer):
    certificate_id = serializers.CharField()
    arn = serializers.CharField()
    fingerprint_sha256 = serializers.CharField()
    key_origin = serializers.CharField(help_text="aws or csr")
    status = serializers.CharField(help_text="active, pending (a rotation) or revoked")
    issued_at = serializers.DateTimeField()
    revoked_at = serializers.DateTimeField(allow_null=True)
    revoked_by = serializers.CharField()
    revoked_reason = serializers.CharField()


class DeviceOutputSerializer(serializers.Serializer):
    serial = serializers.CharField()
    product = serializers.CharField(source="product.name")
    state = serializers.CharField(help_text="registered, token_issued, issuing, active or revoked")
    thing_name = serializers.CharField()
    attributes = serializers.DictField(child=serializers.CharField())
    certificate_id = serializers.CharField(
        source="current_certificate.certificate_id", allow_null=True, default=None, help_text="the current one"
    )
    pending_certificate_id = serializers.CharField(
        source="pending_certificate.certificate_id",
        allow_null=True,
        default=None,
        help_text="during a rotation, the new certificate",
    )
    token_expires_at = serializers.DateTimeField(allow_null=True)
    last_request_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DeviceDetailOutputSerializer(DeviceOutputSerializer):
    certificates = CertificateOutputSerializer(
        many=True,
        required=False,
        help_text="every certificate the device was given, newest first; for keys whose role may view "
        "certificates (security, auditor), as in the admin",
    )

    def to_representation(self, instance: Any) -> dict[str, Any]:
        body = super().to_representation(instance)
        if not self.context.get("with_certificates"):
            body.pop("certificates", None)
        return body


class ResetOutputSerializer(IssuedTokenSerializer):
    pass


class AuditEventOutputSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    kind = serializers.CharField()
    actor = serializers.CharField()
    serial = serializers.CharField()
    client_address = serializers.CharField(allow_null=True)
    data = serializers.DictField()


class DeviceFilterSerializer(StrictSerializer):
    state = serializers.ChoiceField(choices=DeviceState.values, required=False)
    product = StringField(required=False, max_length=PRODUCT_NAME_MAX)
    cursor = StringField(required=False)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=1000)


class AuditFilterSerializer(StrictSerializer):
    serial = SerialField(required=False)
    kind = serializers.ChoiceField(choices=AuditKind.values, required=False)
    since = serializers.DateTimeField(required=False, help_text="ISO 8601; events at or after it")
    cursor = StringField(required=False)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=1000)
