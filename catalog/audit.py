import contextvars
import logging
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection, transaction
from django.utils import timezone

from catalog.models import AuditChainHead, AuditLogEntry
from config.logging import job_id_var, request_id_var

logger = logging.getLogger(__name__)
# The request in which a service already audited its refusal: the views' generic refusal path then adds nothing.
_refusal_audited_in: contextvars.ContextVar[str | None] = contextvars.ContextVar("refusal_audited_in", default=None)


def audit_log_write(
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    action: str,
    object_type: str,
    object_id: object,
    environment: str = "",
    before: Any = None,
    after: Any = None,
) -> AuditLogEntry:
    """Appends one entry to the chain. Must run inside the transaction of the change it records."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit_log_write must run in the transaction of the change it records")
    head, _ = AuditChainHead.objects.select_for_update().get_or_create(pk=1)
    user: Any = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    entry = AuditLogEntry(
        at=timezone.now(),
        actor=user,
        actor_name=user.get_username() if user is not None else ("anonymous" if actor is not None else "system"),
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        environment=environment,
        before=before,
        after=after,
        request_id=request_id_var.get() or "",
        job_id=job_id_var.get() or "",
        prev_hash=head.last_hash,
    )
    entry.entry_hash = entry.compute_hash()
    entry.save()
    head.last_hash = entry.entry_hash
    head.last_entry_id = entry.pk
    head.save(update_fields=["last_hash", "last_entry_id"])
    return entry


def audit_chain_verify() -> tuple[int, list[str]]:
    """Walks the chain from the first entry; returns the number checked and every break found."""
    problems: list[str] = []
    previous = "0" * 64
    checked = 0
    for entry in AuditLogEntry.objects.order_by("id").iterator(chunk_size=2000):
        checked += 1
        if entry.prev_hash != previous:
            problems.append(f"entry {entry.pk}: prev_hash does not match the entry before it")
        if entry.compute_hash() != entry.entry_hash:
            problems.append(f"entry {entry.pk}: its content does not match its hash (edited)")
        previous = entry.entry_hash
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and checked and head.last_hash != previous:
        problems.append("the newest entry is not the chain's head (entries deleted at the end)")
    return checked, problems


@transaction.atomic
def audit_refusal(
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    action: str,
    object_type: str,
    object_id: object,
    reason: str,
    environment: str = "",
) -> None:
    audit_log_write(
        actor=actor,
        action=f"{action}.refused",
        object_type=object_type,
        object_id=object_id,
        environment=environment,
        after={"reason": reason},
    )
    _refusal_audited_in.set(request_id_var.get())


def audit_access_denied(*, actor: Any, method: str, path: str, status: int, reason: str) -> None:
    """The one place a refused request is recorded when no service audited it (API and console alike).

    A signed-in user's refusal becomes an `access.denied` entry naming who, what (method and path) and why. An
    anonymous refusal is only logged: it names nobody, and writing it to the chain would let anyone without
    credentials grow the audit log and contend for its head.
    """
    request_id = request_id_var.get()
    if request_id is not None and _refusal_audited_in.get() == request_id:
        return
    if actor is None or not getattr(actor, "is_authenticated", False):
        logger.warning(
            "access denied", extra={"method": method, "path": path, "status": status, "reason": reason[:500]}
        )
        return
    with transaction.atomic():
        audit_log_write(
            actor=actor,
            action="access.denied",
            object_type="request",
            object_id=f"{method} {path}"[:64],
            after={"method": method, "path": path, "status": status, "reason": reason[:500]},
        )
    _refusal_audited_in.set(request_id)


def audit_log_write_many(
    *, actor: AbstractBaseUser | AnonymousUser | None, environment: str, entries: list[dict[str, Any]]
) -> None:
    """Appends many entries in one chain segment (a catalog apply writes one per feature)."""
    if not entries:
        return
    if not connection.in_atomic_block:
        raise RuntimeError("audit_log_write_many must run in the transaction of the change it records")
    head, _ = AuditChainHead.objects.select_for_update().get_or_create(pk=1)
    user: Any = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    name = user.get_username() if user is not None else "system"
    now = timezone.now()
    previous = head.last_hash
    rows = []
    for item in entries:
        entry = AuditLogEntry(
            at=now,
            actor=user,
            actor_name=name,
            action=item["action"],
            object_type=item["object_type"],
            object_id=str(item["object_id"]),
            environment=environment,
            before=item.get("before"),
            after=item.get("after"),
            request_id=request_id_var.get() or "",
            job_id=job_id_var.get() or "",
            prev_hash=previous,
        )
        entry.entry_hash = entry.compute_hash()
        previous = entry.entry_hash
        rows.append(entry)
    created = AuditLogEntry.objects.bulk_create(rows, batch_size=500)
    head.last_hash = previous
    head.last_entry_id = created[-1].pk
    head.save(update_fields=["last_hash", "last_entry_id"])
