"""The portal's records. The database is the source of truth; DynamoDB only mirrors it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db import models
from rest_framework_api_key.models import AbstractAPIKey

from .validators import validate_policy_name, validate_product_name, validate_thing_type_name


class Product(models.Model):
    """A device model line, shaped like an AWS fleet-provisioning template (SPEC §5.1).

    Its things get its thing type and join its static thing groups; its certificates get its policy.
    Every device belongs to one, and the name goes into the thing attributes.
    """

    # Becomes the thing attribute `product`: AWS IoT's attribute value rule applies (validators.py).
    name = models.CharField(max_length=64, unique=True, validators=[validate_product_name])
    description = models.CharField(max_length=255, blank=True)
    # Empty: CVM_IOT_POLICY_NAME, the portal's default least-privilege policy.
    iot_policy = models.CharField(max_length=128, blank=True, validators=[validate_policy_name])
    thing_type = models.CharField(max_length=128, blank=True, validators=[validate_thing_type_name])
    thing_groups = models.JSONField(default=list, blank=True)
    # Devices whose certificate is older than this are "rotation due"; answers carry `rotate_after`.
    rotate_after_days = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def policy_name(self) -> str:
        from django.conf import settings

        return self.iot_policy or settings.CVM_IOT_POLICY_NAME


class DeviceState(models.TextChoices):
    REGISTERED = "registered", "registered"
    TOKEN_ISSUED = "token_issued", "token issued"
    ISSUING = "issuing", "issuing"
    ACTIVE = "active", "active"
    REVOKED = "revoked", "revoked"


class DeviceAction(models.TextChoices):
    """What can happen to a device; LIFECYCLE says from which states and into which."""

    ISSUE_TOKEN = "issue_token", "issue a token"
    VEND = "vend", "claim for an issuance"
    ISSUE = "issue", "record the issued certificate"
    RELEASE = "release", "release a failed issuance"
    RECOVER = "recover", "recover a dead issuance"
    REVOKE = "revoke", "revoke"
    RESET = "reset", "reset"
    REPLAY = "replay", "answer a lost issuance again"
    ROTATE = "rotate", "start a rotation"
    CONFIRM = "confirm", "confirm a rotation"
    ROLLBACK = "rollback", "roll back a rotation"


@dataclass(frozen=True)
class Transition:
    """An action's source states and the state it leads to.

    `via`: an action the service performs first when the device is in one of that action's sources
    (reset revokes an active device, then resets it), so a person may ask for it from those states too.
    """

    sources: tuple[str, ...]
    target: str
    via: str | None = None


# The device lifecycle (SPEC §4), declared once: services guard their conditional UPDATEs with it
# (services/common.py, device_transition), and the admin, its templates and reconcile ask it what a
# device in a given state allows.
LIFECYCLE: dict[str, Transition] = {
    DeviceAction.ISSUE_TOKEN: Transition((DeviceState.REGISTERED, DeviceState.TOKEN_ISSUED), DeviceState.TOKEN_ISSUED),
    DeviceAction.VEND: Transition((DeviceState.TOKEN_ISSUED,), DeviceState.ISSUING),
    DeviceAction.ISSUE: Transition((DeviceState.ISSUING,), DeviceState.ACTIVE),
    DeviceAction.RELEASE: Transition((DeviceState.ISSUING,), DeviceState.TOKEN_ISSUED),
    DeviceAction.RECOVER: Transition((DeviceState.ISSUING,), DeviceState.TOKEN_ISSUED),
    DeviceAction.REVOKE: Transition((DeviceState.ACTIVE,), DeviceState.REVOKED),
    DeviceAction.RESET: Transition((DeviceState.REVOKED,), DeviceState.TOKEN_ISSUED, via=DeviceAction.REVOKE),
    # A device stays active through a rotation: its certificates change, its state does not.
    DeviceAction.REPLAY: Transition((DeviceState.ACTIVE,), DeviceState.ACTIVE),
    DeviceAction.ROTATE: Transition((DeviceState.ACTIVE,), DeviceState.ACTIVE),
    DeviceAction.CONFIRM: Transition((DeviceState.ACTIVE,), DeviceState.ACTIVE),
    DeviceAction.ROLLBACK: Transition((DeviceState.ACTIVE,), DeviceState.ACTIVE),
}


def allowed_states(action: str) -> tuple[str, ...]:
    """The states from which a person may ask for `action` (including those it reaches `via` another)."""
    transition = LIFECYCLE[action]
    extra = allowed_states(transition.via) if transition.via else ()
    return tuple(dict.fromkeys((*extra, *transition.sources)))


def action_allowed(action: str, state: str) -> bool:
    return state in allowed_states(action)


class Device(models.Model):
    """A serial number known to the factory, and where it stands on its way to a certificate."""

    serial = models.CharField(max_length=64, unique=True)
    # No index of its own: `device_product_state` starts with it.
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="devices", db_index=False)
    state = models.CharField(max_length=16, choices=DeviceState.choices, default=DeviceState.REGISTERED)
    # HMAC-SHA256 of the registration token (hex); the token itself is never stored.
    token_digest = models.CharField(max_length=64, blank=True, default="")
    token_expires_at = models.DateTimeField(null=True, blank=True)
    token_issued_at = models.DateTimeField(null=True, blank=True)
    # Set while a request holds the device in `issuing`; a stale claim marks a crashed issuance.
    claim_id = models.UUIDField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    thing_name = models.CharField(max_length=128, blank=True)
    # The device's own thing attributes (name -> value), beside `serial` and `product`; checked against AWS
    # IoT's attribute rules where they enter (validators.py).
    attributes = models.JSONField(default=dict, blank=True)
    # A failed issuance could not remove a certificate it created (AWS was down); the next vend, or
    # `reconcile`, removes whatever the thing holds that the database does not know before going on.
    aws_cleanup_pending = models.BooleanField(default=False)
    # One device per certificate: the partial unique constraints in Meta.
    current_certificate = models.ForeignKey(
        "Certificate", null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    # During a rotation (SPEC §3.2): the new certificate, ACTIVE in AWS beside the current one until the
    # device confirms it or CVM_ROTATION_GRACE_SECONDS pass.
    pending_certificate = models.ForeignKey(
        "Certificate", null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    last_request_at = models.DateTimeField(null=True, blank=True)
    # The admin import that registered it, so staff get back to "the batch I just imported"; none for a
    # serial added by hand, by `import_serials` or by the API.
    import_batch = models.ForeignKey(
        "ImportBatch", null=True, blank=True, on_delete=models.SET_NULL, related_name="devices", db_index=False
    )
    # Increases with every change; the DynamoDB mirror never lets an older version replace a newer one.
    version = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["serial"]
        indexes = [
            models.Index(fields=["state", "serial"], name="device_state_serial"),
            models.Index(fields=["product", "state"], name="device_product_state"),
            # Only devices imported through the admin name a batch. A token run rewrites every index
            # entry of the devices it changes (the state is in two indexes, so no update is HOT): the
            # NULLs of the other devices are kept out of this index and the two below (migration 0017).
            models.Index(
                fields=["import_batch"], condition=models.Q(import_batch__isnull=False), name="device_import_batch"
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["current_certificate"],
                condition=models.Q(current_certificate__isnull=False),
                name="device_current_certificate",
            ),
            models.UniqueConstraint(
                fields=["pending_certificate"],
                condition=models.Q(pending_certificate__isnull=False),
                name="device_pending_certificate",
            ),
        ]
        permissions = [
            ("issue_token", "Can issue registration tokens"),
            ("revoke_device", "Can revoke a device's certificate"),
            ("reset_device", "Can reset a device"),
            ("import_devices", "Can import serials from CSV"),
        ]

    def __str__(self) -> str:
        return self.serial

    def allows(self, action: str) -> bool:
        """Whether the device's state allows `action` (templates: `device.allows.revoke` is not
        expressible, so the admin passes `allowed_actions`)."""
        return action_allowed(action, self.state)

    @property
    def allowed_actions(self) -> frozenset[str]:
        return frozenset(action for action in LIFECYCLE if action_allowed(action, self.state))


class KeyOrigin(models.TextChoices):
    AWS = "aws", "generated by AWS IoT"
    CSR = "csr", "generated on the device (CSR)"


class CertificateStatus(models.TextChoices):
    ACTIVE = "active", "active"
    PENDING = "pending", "pending rotation"
    REVOKED = "revoked", "revoked"


class Certificate(models.Model):
    """One issued certificate; a device keeps one row per certificate it was ever given."""

    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="certificates")
    certificate_id = models.CharField(max_length=64, unique=True)
    arn = models.CharField(max_length=255)
    fingerprint_sha256 = models.CharField(max_length=64, db_index=True)
    key_origin = models.CharField(max_length=8, choices=KeyOrigin.choices)
    status = models.CharField(max_length=8, choices=CertificateStatus.choices, default=CertificateStatus.ACTIVE)
    thing_name = models.CharField(max_length=128)
    # The policy attached at issuance (the product's then); revoke detaches this one. Empty: the default.
    policy_name = models.CharField(max_length=128, blank=True)
    issued_at = models.DateTimeField(db_index=True)
    issued_to_address = models.GenericIPAddressField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=150, blank=True)
    revoked_reason = models.CharField(max_length=255, blank=True)
    # The key the certificate certifies, as the portal saw it (the CSR's, or the one AWS generated): what
    # a rotation proof is verified against, and what a lost answer is matched by (SPEC §3.1, §3.2).
    public_key_pem = models.TextField(blank=True)
    # The certificate itself is public; kept so a lost answer can be given again.
    certificate_pem = models.TextField(blank=True)
    # The certificate this one replaced in a rotation (a confirm asked twice answers with it).
    previous_certificate = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["-issued_at"]
        indexes = [models.Index(fields=["device", "-issued_at"], name="certificate_device_issued")]
        constraints = [
            # The database itself refuses a second ACTIVE certificate for one device.
            models.UniqueConstraint(
                fields=["device"],
                condition=models.Q(status="active"),
                name="one_active_certificate_per_device",
            )
        ]

    def __str__(self) -> str:
        return self.certificate_id

    @property
    def attached_policy(self) -> str:
        """The policy to detach from this certificate (older rows recorded none: the default then)."""
        from django.conf import settings

        return self.policy_name or settings.CVM_IOT_POLICY_NAME


class AuditKind(models.TextChoices):
    DEVICE_REGISTERED = "device_registered", "device registered"
    SERIALS_IMPORTED = "serials_imported", "serials imported"
    TOKEN_ISSUED = "token_issued", "token issued"
    VEND_CLAIMED = "vend_claimed", "issuance started"
    CERTIFICATE_ISSUED = "certificate_issued", "certificate issued"
    VEND_FAILED = "vend_failed", "issuance failed"
    VEND_REFUSED = "vend_refused", "request refused"
    VEND_BUSY = "vend_busy", "request refused: issuance in progress"
    VEND_THROTTLED = "vend_throttled", "request throttled"
    CLAIM_RECOVERED = "claim_recovered", "stale claim recovered"
    DEVICE_REVOKED = "device_revoked", "device revoked"
    DEVICE_RESET = "device_reset", "device reset"
    RECONCILE_REPAIR = "reconcile_repair", "reconcile repair"
    LEGACY_IMPORTED = "legacy_imported", "imported from the reference CVM table"
    CERTIFICATE_REPLAYED = "certificate_replayed", "lost answer given again"
    ROTATE_REFUSED = "rotate_refused", "rotation refused"
    ROTATION_STARTED = "rotation_started", "rotation started"
    ROTATION_STEP_STARTED = "rotation_step_started", "rotation confirm or roll-back started"
    ROTATION_ISSUED = "rotation_issued", "rotation certificate issued"
    ROTATION_FAILED = "rotation_failed", "rotation failed"
    ROTATION_REPLAYED = "rotation_replayed", "lost rotation answer given again"
    ROTATION_CONFIRMED = "rotation_confirmed", "rotation confirmed"
    ROTATION_ROLLED_BACK = "rotation_rolled_back", "rotation rolled back"
    PRODUCT_CONFIGURED = "product_configured", "product configured"
    ADMIN_LOGIN = "admin_login", "staff login"
    ADMIN_LOGIN_FAILED = "admin_login_failed", "staff login failed"
    API_KEY_CREATED = "api_key_created", "staff API key created"
    API_KEY_REVOKED = "api_key_revoked", "staff API key revoked"
    WEBHOOK_ADDED = "webhook_added", "webhook endpoint added"
    WEBHOOK_DISABLED = "webhook_disabled", "webhook endpoint disabled"
    WEBHOOK_ENABLED = "webhook_enabled", "webhook endpoint enabled"


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise PermissionError("audit events are append-only")

    def delete(self):
        raise PermissionError("audit events are append-only")


class AuditEvent(models.Model):
    """An append-only, hash-chained record of everything that happened.

    Written unchained (`seq` NULL, empty hashes) in the transaction of the change it records; the
    sequencer (`provisioning.audit.audit_chain_pending`) then sets `seq`, `prev_hash` and `hash`, an
    HMAC over this row's content, its `seq` and the previous row's hash, so editing, inserting or
    deleting any chained row breaks the chain from there on (`manage.py verify_audit`). `id` is the
    order events were written in; `seq` the order they were chained in.
    """

    seq = models.PositiveBigIntegerField(unique=True, null=True, blank=True)
    created_at = models.DateTimeField(db_index=True)
    kind = models.CharField(max_length=40, choices=AuditKind.choices)
    actor = models.CharField(max_length=150, blank=True)
    serial = models.CharField(max_length=64, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)
    data = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True, default="")
    hash = models.CharField(max_length=64, blank=True, default="")
    # HMAC of the content alone, made by the writer: the sequencer chains only events that carry a valid
    # one, so an event forged or altered in the database before it is chained is never signed into the chain.
    mac = models.CharField(max_length=64, blank=True, default="")

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        permissions = [("view_audit", "Can see the dashboard and export audit data as CSV")]
        indexes = [
            # The sequencer's work list: small, since events leave it within a second.
            models.Index(fields=["id"], condition=models.Q(seq__isnull=True), name="audit_unchained"),
            models.Index(fields=["serial", "kind", "created_at"], name="audit_serial_kind_time"),
            # Only device requests carry an address; every event of staff, commands and imports has none, and
            # a lookup by address (`client_address = %s`) never matches NULL (migration 0017).
            models.Index(
                fields=["client_address", "kind", "created_at"],
                condition=models.Q(client_address__isnull=False),
                name="audit_address_kind_time",
            ),
            models.Index(fields=["kind", "created_at"], name="audit_kind_time"),
            models.Index(fields=["actor", "created_at"], name="audit_actor_time"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq or '(unchained)'} {self.kind} {self.serial}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise PermissionError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("audit events are append-only")


class ProofJti(models.Model):
    """A rotation proof's `jti`, accepted once per device (SPEC §3.2).

    Only needs keeping while a proof carrying it could still be fresh (its `iat` within 300 s); older
    rows are pruned by the worker.
    """

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    jti = models.CharField(max_length=128)
    used_at = models.DateTimeField(db_index=True)
    # The pending certificate the proof started, so a lost rotate answer can be fetched again with it.
    certificate = models.ForeignKey(Certificate, null=True, blank=True, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "jti"], name="one_use_per_jti")]

    def __str__(self) -> str:
        return f"{self.device_id}:{self.jti}"


class AuditChainHead(models.Model):
    """The chain's newest event: the single row the audit sequencer locks, so two never fork the chain."""

    last_seq = models.PositiveBigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"#{self.last_seq} {self.last_hash}"


class DynamoOutbox(models.Model):
    """A device change waiting to be written to the DynamoDB association table.

    Written in the same transaction as the change, so nothing committed is lost and nothing rolled back
    is sent; `sync_dynamodb` drains it.
    """

    serial = models.CharField(max_length=64)
    version = models.PositiveBigIntegerField()
    item = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    # Back-off after a failed write; `sync_dynamodb --once` ignores it (someone asked for a drain now).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Set while one worker is writing the row, so no other worker writes it at the same time.
    leased_until = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=255, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "DynamoDB outbox entry"
        verbose_name_plural = "DynamoDB outbox"
        indexes = [
            models.Index(fields=["done_at", "id"], name="outbox_pending"),
            models.Index(fields=["serial", "id"], name="outbox_serial"),
        ]

    def __str__(self) -> str:
        return f"{self.serial} v{self.version}"


class ImportState(models.TextChoices):
    PREVIEWED = "previewed", "waiting for confirmation"
    QUEUED = "queued", "confirmed, waiting for the import worker"
    IMPORTING = "importing", "importing"
    IMPORTED = "imported", "imported"
    FAILED = "failed", "failed, nothing imported"
    EXPIRED = "expired", "not confirmed in time"


class ImportBatch(models.Model):
    """A CSV of serials uploaded in the admin, kept on the server until it is confirmed and imported.

    The confirmation names the batch, not the file, so a million-row file never travels back through a
    form. The file lives in the database, where every portal instance and the `run_imports` worker
    find it wherever they run; it is dropped once the batch is imported, has failed or has expired.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    file_name = models.CharField(max_length=255)
    file_size = models.PositiveBigIntegerField()
    file_sha256 = models.CharField(max_length=64)
    content = models.BinaryField()
    default_product = models.CharField(max_length=64, blank=True)
    uploaded_by = models.CharField(max_length=150)
    uploaded_at = models.DateTimeField(db_index=True)
    # What the preview found, when the file was uploaded.
    row_count = models.PositiveIntegerField()
    new_count = models.PositiveIntegerField()
    known_count = models.PositiveIntegerField()
    preview = models.JSONField(default=list, blank=True)
    # The preview's warnings: each product the new rows name ([name, rows, whether the import creates
    # it]), how many new rows named none (they get `default_product`, or "default"), and the first
    # serials that are already known ([line, serial, state]).
    products = models.JSONField(default=list, blank=True)
    unnamed_count = models.PositiveIntegerField(default=0)
    known_preview = models.JSONField(default=list, blank=True)
    state = models.CharField(max_length=16, choices=ImportState.choices, default=ImportState.PREVIEWED)
    confirmed_by = models.CharField(max_length=150, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    # The worker importing it: a claim, taken with a conditional UPDATE, that the import checks before
    # it commits, so a batch is imported once even when a second worker takes over a stale claim.
    claim_id = models.UUIDField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    writing_started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_count = models.PositiveIntegerField(null=True, blank=True)
    already_known_count = models.PositiveIntegerField(null=True, blank=True)
    products_created = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-uploaded_at"]
        indexes = [models.Index(fields=["state", "confirmed_at"], name="import_batch_pending")]

    def __str__(self) -> str:
        return f"{self.file_name} ({self.state})"


class ApiKeyRole(models.TextChoices):
    """A staff API key's role: the group of the same name (SPEC §8) holds its permissions."""

    FACTORY = "factory", "factory"
    SECURITY = "security", "security"
    AUDITOR = "auditor", "auditor"


class StaffApiKey(AbstractAPIKey):
    """A key for the staff API (SPEC §9): stored as a SHA-512 hash with an 8-character prefix to find it.

    The key itself is printed once by `create_api_key`. Its permissions are those of the group named
    like its role, read at each request, so the admin's groups are the one source of truth for both.
    """

    role = models.CharField(max_length=16, choices=ApiKeyRole.choices)
    created_by = models.CharField(max_length=150, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=150, blank=True)
    # Written at most once a minute per key, so a busy key costs no write per request.
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "staff API key"
        verbose_name_plural = "staff API keys"
        constraints = [
            # The audit log names a key by its name (`api-key:NAME`): two usable keys never share one.
            models.UniqueConstraint(fields=["name"], condition=models.Q(revoked=False), name="one_usable_key_per_name")
        ]

    @property
    def actor(self) -> str:
        return f"api-key:{self.name}"


class WebhookEndpoint(models.Model):
    """A system that receives the fleet's events (SPEC §10), signed per the Standard Webhooks spec."""

    url = models.CharField(max_length=2000)
    description = models.CharField(max_length=255, blank=True)
    # The event types it receives; empty: all of them.
    event_types = models.JSONField(default=list, blank=True)
    # `whsec_` + base64: the key of the HMAC every delivery is signed with. The portal must hold it to
    # sign, so it is kept as it is; it is shown once, by `add_webhook`, and never in the admin.
    secret = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return self.url

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class WebhookDelivery(models.Model):
    """One event on its way to one endpoint, written in the transaction of the change it reports.

    `message_id` (the `webhook-id` header) is the event's and is the same for every endpoint and every
    attempt, so a receiver can drop a duplicate. Deliveries of one device to one endpoint go out one at a
    time in `id` order: a later one waits while an earlier one is pending.
    """

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    message_id = models.CharField(max_length=40)
    event_type = models.CharField(max_length=40)
    # The order key: events of one device reach an endpoint in the order they happened.
    serial = models.CharField(max_length=64, blank=True)
    # Exactly the bytes sent (and signed): {"type", "timestamp", "data"}.
    body = models.TextField()
    created_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    leased_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=255, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(
                fields=["next_attempt_at", "id"], name="webhook_due", condition=models.Q(delivered_at__isnull=True)
            ),
            models.Index(
                fields=["endpoint", "serial", "id"],
                name="webhook_device_order",
                condition=models.Q(delivered_at__isnull=True),
            ),
            models.Index(fields=["delivered_at"], name="webhook_delivered"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.serial} -> {self.endpoint_id}"


__all__ = [
    "LIFECYCLE",
    "ApiKeyRole",
    "AuditChainHead",
    "AuditEvent",
    "AuditKind",
    "Certificate",
    "CertificateStatus",
    "Device",
    "DeviceAction",
    "DeviceState",
    "DynamoOutbox",
    "ImportBatch",
    "ImportState",
    "KeyOrigin",
    "Product",
    "ProofJti",
    "StaffApiKey",
    "Transition",
    "WebhookDelivery",
    "WebhookEndpoint",
    "action_allowed",
    "allowed_states",
]
