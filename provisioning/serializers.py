"""Input and output shapes of the device API."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from .crypto import MAX_CSR_BYTES, CsrInvalid, csr_validate
from .proofs import MAX_PROOF_BYTES
from .validators import SERIAL_MESSAGE, SERIAL_PATTERN, SERIAL_RE

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
