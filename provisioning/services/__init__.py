"""Everything that changes state. The API, the admin and the management commands all call these.

One module per sub-domain: `registration` (serials in), `tokens`, `vending` (certificates out, and
recovery of dead claims), `revocation` (revoke and reset), `legacy` (the reference CVM's table), and
`common` (errors, actors and the one guarded transition every state change goes through).
"""

from .common import (
    DEFAULT_PRODUCT,
    DEVICE_ACTOR,
    SYSTEM_ACTOR,
    BatchOutcome,
    DeviceNotEligible,
    IssuedToken,
    ServiceError,
    aws_failure_advice,
    device_transition,
    devices_transition_many,
    record_device_change,
    staff_login_record,
    thing_name_for,
)
from .legacy import LegacyImportReport, legacy_table_import
from .registration import ImportInvalid, ImportReport, ImportRow, device_register, devices_import, serials_parse_csv
from .revocation import (
    device_refusal,
    device_reset,
    device_revoke,
    devices_check,
    devices_reset,
    devices_revoke,
    reset_check,
    revoke_check,
)
from .tokens import (
    registered_serials,
    token_check,
    token_refusal_advice,
    token_ttl,
    tokens_issue,
    tokens_issue_eligible,
)
from .vending import (
    BUSY_RETRY_AFTER,
    FAILURE_WINDOW,
    VendRefused,
    VendResult,
    VendRetryLater,
    certificate_vend,
    claim_is_stale,
    claim_recover,
    claim_retry_after,
    unknown_thing_certificates,
)

__all__ = [
    "BUSY_RETRY_AFTER",
    "DEFAULT_PRODUCT",
    "DEVICE_ACTOR",
    "FAILURE_WINDOW",
    "SYSTEM_ACTOR",
    "BatchOutcome",
    "DeviceNotEligible",
    "ImportInvalid",
    "ImportReport",
    "ImportRow",
    "IssuedToken",
    "LegacyImportReport",
    "ServiceError",
    "VendRefused",
    "VendResult",
    "VendRetryLater",
    "aws_failure_advice",
    "certificate_vend",
    "claim_is_stale",
    "claim_recover",
    "claim_retry_after",
    "device_refusal",
    "device_register",
    "device_reset",
    "device_revoke",
    "device_transition",
    "devices_check",
    "devices_import",
    "devices_reset",
    "devices_revoke",
    "devices_transition_many",
    "legacy_table_import",
    "record_device_change",
    "registered_serials",
    "reset_check",
    "revoke_check",
    "serials_parse_csv",
    "staff_login_record",
    "thing_name_for",
    "token_check",
    "token_refusal_advice",
    "token_ttl",
    "tokens_issue",
    "tokens_issue_eligible",
    "unknown_thing_certificates",
]
