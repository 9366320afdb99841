"""The staff portal: the Django admin, with the fleet's roles (SPEC §8).

Roles are groups created by a migration: `factory` adds and imports serials and issues tokens,
`security` also revokes and resets, `auditor` reads everything and exports CSV. Nobody edits a device,
certificate or audit event directly, superusers included; every change goes through a service.

- `base` — what every list shares: declared lookups only, large-table paging, read-only, CSV export;
- `confirm` — the confirmation page in front of issuing tokens, revoking and resetting; `actions` —
  those three actions;
- `devices` — products, the device list and a device's page (`device_page`); `imports` — CSV uploads,
  their progress and their batch of devices; `filters` — import batch, rotation, date range;
- `history` — certificates, the audit log and the DynamoDB outbox, read-only;
- `automation` — staff API keys, webhook endpoints and their deliveries;
- `dashboard` — the home page; `forbidden` — refusals in the admin's own layout.
"""

from . import automation, devices, history
from .actions import TtlForm
from .base import DeclaredLookupsOnly, declared_lookups_everywhere
from .imports import ImportForm

__all__ = [
    "DeclaredLookupsOnly",
    "ImportForm",
    "TtlForm",
    "automation",
    "declared_lookups_everywhere",
    "devices",
    "history",
]
