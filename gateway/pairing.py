"""Pairing a patch with a subject in the registry, with the replacements made explicit.

A pairing is planned against the registry first (`plan_pairing`): it is refused, naming
the flag that allows it, when it would move a device to another subject (`reassign`) or
give a subject that another device wears to this one (`reuse_subject`, which unpairs the
other device). The plan says what it replaces; `apply_pairing` writes it inside the
caller's transaction.

    plan = plan_pairing(store, device_id, key, "s-0001", skin_type=2)
    with store.transaction():
        apply_pairing(store, plan, now_ms)
    for line in plan.replacements(): print(line)
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from gateway.store import Store, StoreError
from gateway.values import RegisteredDevice

SUBJECT_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
SUBJECT_RULE = "use 1-64 letters, digits, '-' or '_' (a pseudonymous id, never a name)"
SKIN_TYPES = range(1, 7)
# The command-line flags that allow a replacement (named in refusals).
REASSIGN_FLAG = "--reassign"
REUSE_SUBJECT_FLAG = "--reuse-subject"


class PairingRefused(ValueError):
    """The registry will not take this pairing as asked; `field` names the input."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PairingPlan:
    device: RegisteredDevice
    previous: RegisteredDevice | None  # this device's current pairing, if any
    displaced: RegisteredDevice | None  # another device that wears this subject now
    retired: RegisteredDevice | None = None  # the board's earlier identity, now overwritten

    def replacements(self) -> list[str]:
        """What the pairing replaces, one sentence each (empty for a fresh pairing)."""
        lines = []
        dev = self.device
        if self.previous is not None:
            if self.previous.subject != dev.subject:
                lines.append(f"device {dev.device_id} was paired with subject "
                             f"{self.previous.subject}; it now belongs to {dev.subject}")
            elif self.previous.key != dev.key:
                lines.append(f"device {dev.device_id} had another key; the new key replaces it")
            if self.previous.skin_type != dev.skin_type:
                lines.append(f"skin type of {dev.subject}: {self.previous.skin_type} -> "
                             f"{dev.skin_type}")
        if self.retired is not None:
            lines.append(f"device {self.retired.device_id} (subject {self.retired.subject}) "
                         "is unpaired: the board no longer carries its identity (its stored "
                         "samples are kept)")
        if self.displaced is not None:
            lines.append(f"subject {dev.subject} was worn with device "
                         f"{self.displaced.device_id}; that device is unpaired (its stored "
                         "samples are kept)")
        return lines


def validate_subject(subject: str) -> str:
    if not isinstance(subject, str) or not SUBJECT_PATTERN.fullmatch(subject):
        raise PairingRefused(f"subject {subject!r}: {SUBJECT_RULE}", "subject")
    return subject


def plan_pairing(store: Store, device_id: str, key: bytes, subject: str, skin_type: int = 3,
                 *, reassign: bool = False, reuse_subject: bool = False,
                 retiring: str | None = None) -> PairingPlan:
    """Check a pairing against the registry; PairingRefused names the flag that allows it.

    `retiring`: the device id whose identity the board held before (being overwritten by
    provisioning): unpaired with the pairing, and its subject free to take."""
    validate_subject(subject)
    if skin_type not in SKIN_TYPES:
        raise PairingRefused(f"skin type {skin_type}: must be a Fitzpatrick type 1-6",
                             "skin_type")
    previous = store.device(device_id)
    if previous is not None and previous.subject != subject and not reassign:
        raise PairingRefused(
            f"device {device_id} is already paired with subject {previous.subject}; pass "
            f"{REASSIGN_FLAG} to move it to {subject}", "device_id")
    retired = store.device(retiring) if retiring and retiring != device_id else None
    displaced = next((d for d in store.devices() if d.subject == subject
                      and d.device_id not in (device_id, retiring)), None)
    if displaced is not None and not reuse_subject:
        raise PairingRefused(
            f"subject {subject} is already paired with device {displaced.device_id}; pass "
            f"{REUSE_SUBJECT_FLAG} to give it to this device (unpairs "
            f"{displaced.device_id}), or choose another subject", "subject")
    kept = previous if previous is not None and previous.subject == subject else None
    device = RegisteredDevice(device_id, bytes(key), subject, skin_type,
                              kept.address if kept else None,
                              dict(kept.config) if kept else {})
    return PairingPlan(device, previous, displaced, retired)


def apply_pairing(store: Store, plan: PairingPlan, paired_at_ms: int) -> None:
    """Write the plan; call inside store.transaction(). A clash that appeared since the plan
    (another process paired the subject meanwhile) is a PairingRefused, not an sqlite error."""
    for gone in (plan.displaced, plan.retired):
        if gone is not None:
            store.unregister(gone.device_id)
    try:
        store.register(plan.device, paired_at_ms)
    except sqlite3.IntegrityError as error:
        raise PairingRefused(
            f"subject {plan.device.subject} was paired with another device meanwhile; "
            "nothing was changed", "subject") from error
    except sqlite3.OperationalError as error:
        raise StoreError(f"the registry could not be written: {error}") from error
