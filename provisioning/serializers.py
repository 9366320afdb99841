"""Input and output shapes of the device API."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from .crypto import MAX_CSR_BYTES, CsrInvalid, csr_validate
from .validators import SERIAL_PATTERN, SERIAL_RE


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo in a device's firmware is caught, not ignored."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name[:64]: ["unknown field"] for name in unknown[:10]})
        return attrs


class VendInputSerializer(StrictSerializer):
    serial = serializers.RegexField(
        SERIAL_PATTERN,
        max_length=64,
        trim_whitespace=False,
        error_messages={"invalid": "serial must be 1-64 characters: letters, digits, ':', '_' or '-'"},
    )
    token = serializers.CharField(max_length=128, trim_whitespace=False)
    csr = serializers.CharField(
        required=False,
        max_length=MAX_CSR_BYTES,
        trim_whitespace=False,
        help_text="PEM PKCS#10 request; RSA 2048-4096 or EC P-256/P-384, subject CN equal to the serial",
    )

    def validate_serial(self, value: str) -> str:
        # The schema's pattern uses `$`, which Python lets match before a trailing newline; \Z does not.
        if not SERIAL_RE.match(value):
            raise serializers.ValidationError(self.fields["serial"].error_messages["invalid"])
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        csr = attrs.get("csr")
        if csr is None:
            if settings.CVM_REQUIRE_CSR:
                raise serializers.ValidationError({"csr": ["a CSR is required: generate the key on the device"]})
            attrs["validated_csr"] = None
            return attrs
        try:
            attrs["validated_csr"] = csr_validate(csr, serial=attrs["serial"])
        except CsrInvalid as exc:
            raise serializers.ValidationError({"csr": [str(exc)]}) from None
        return attrs


class VendOutputSerializer(serializers.Serializer):
    serial = serializers.CharField()
    thing_name = serializers.CharField()
    certificate_id = serializers.CharField()
    certificate_arn = serializers.CharField()
    certificate_pem = serializers.CharField()
    private_key_pem = serializers.CharField(required=False, help_text="only when no CSR was sent")
    iot_endpoint = serializers.CharField(help_text="the account's iot:Data-ATS endpoint")
    root_ca_pem = serializers.CharField(help_text="Amazon Root CA 1")


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


class HealthSerializer(serializers.Serializer):
    status = serializers.CharField()


class LegacyInputSerializer(serializers.Serializer):
    """The reference CVM's two fields, under the same serial rule as the portal's own API."""

    serialNumber = serializers.RegexField(
        SERIAL_PATTERN,
        max_length=64,
        trim_whitespace=False,
        error_messages={"invalid": "serial must be 1-64 characters: letters, digits, ':', '_' or '-'"},
    )
    deviceToken = serializers.CharField(max_length=256, trim_whitespace=False)

    def validate_serialNumber(self, value: str) -> str:
        if not SERIAL_RE.match(value):
            raise serializers.ValidationError(self.fields["serialNumber"].error_messages["invalid"])
        return value
