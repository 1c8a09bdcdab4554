"""Where `provision()` records a new identity besides the board: the gateway's registry
(paired with a subject), or a key file to pair later. Both take part in provisioning as a
transaction (gateway.provision.IdentityRecord): prepare, then the board, then commit."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from gateway.clock import now_ms
from gateway.pairing import PairingPlan, PairingRefused, apply_pairing, plan_pairing
from gateway.provision import IdentityRecord
from gateway.store import Store, StoreError

log = logging.getLogger(__name__)


class _Rehearsed(Exception):
    """Ends the rehearsal transaction (rolled back on purpose)."""


class RegistryRecord(IdentityRecord):
    """Pair the new identity with `subject` in the gateway's registry.

    prepare() plans the pairing (refusing a reassignment or a reused subject without its
    flag) and rehearses the write in a transaction that is rolled back, so a read-only or
    locked database refuses before the board is touched, without holding the database's
    write lock while the board is written (a running gateway commits samples meanwhile).
    """

    def __init__(self, store: Store, subject: str, skin_type: int = 3, *,
                 reassign: bool = False, reuse_subject: bool = False):
        self.store = store
        self.subject = subject
        self.skin_type = skin_type
        self.reassign = reassign
        self.reuse_subject = reuse_subject
        self.plan: PairingPlan | None = None
        self.replaces: str | None = None

    def untouched(self) -> str:
        return "the registry is unchanged"

    def _plan(self, device_id: str, key: bytes) -> PairingPlan:
        return plan_pairing(self.store, device_id, key, self.subject, self.skin_type,
                            reassign=self.reassign, reuse_subject=self.reuse_subject,
                            retiring=self.replaces)

    def prepare(self, device_id: str, key: bytes, replaces: str | None = None) -> None:
        self.replaces = replaces
        plan = self._plan(device_id, key)
        try:
            with self.store.transaction():
                apply_pairing(self.store, plan, now_ms())
                raise _Rehearsed
        except _Rehearsed:
            pass
        except sqlite3.Error as error:
            raise StoreError(f"the registry cannot be written: {error}") from error
        self.plan = plan

    def commit(self, device_id: str, key: bytes) -> None:
        # Planned again: another process may have paired the subject since prepare().
        plan = self._plan(device_id, key)
        try:
            with self.store.transaction():
                apply_pairing(self.store, plan, now_ms())
        except sqlite3.Error as error:
            raise StoreError(f"the registry cannot be written: {error}") from error
        self.plan = plan

    def replacements(self) -> list[str]:
        return self.plan.replacements() if self.plan is not None else []


class KeyFileRecord(IdentityRecord):
    """Keep the new key in a file (mode 600) to pair later with `dermtwin pair`.

    prepare() writes FILE.part, commit() renames it into place, abort() removes it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._part = self.path.with_name(self.path.name + ".part")

    def untouched(self) -> str:
        return f"no key file was written ({self.path})"

    def prepare(self, device_id: str, key: bytes, replaces: str | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(key.hex() + "\n")
            file.flush()
            os.fsync(file.fileno())

    def commit(self, device_id: str, key: bytes) -> None:
        os.replace(self._part, self.path)

    def abort(self) -> None:
        try:
            self._part.unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not remove %s: %s", self._part, error)


__all__ = ["KeyFileRecord", "PairingRefused", "RegistryRecord"]
