"""Provisioning as a transaction with the registry, against the board under test: every
failure point leaves board and registry consistent (the board keeps what it had and the
registry is unchanged, or both hold the new identity).

Failures are real ones: the registry refuses (a clash, a read-only database, a pairing made
by another process meanwhile), the serial port is closed in the middle of the write (the
cable pulled: before the board runs a step, or after it ran it and before its answer), the
board raises (a file where its data directory should be), its filesystem stores something
else than was written, the technician presses Ctrl-C.
"""

from __future__ import annotations

import sqlite3

import pytest
from board_fixture import SCRATCH_DIR

from gateway import store as store_mod
from gateway.pairing import PairingRefused, apply_pairing, plan_pairing
from gateway.provision import (
    IdentityExistsError,
    ProvisionError,
    identity_text,
    provision,
)
from gateway.provision_record import KeyFileRecord, RegistryRecord
from gateway.serial_repl import CTRL_D, RawRepl

DATA_DIR = f"{SCRATCH_DIR}/data"
IDENTITY_PATH = f"{DATA_DIR}/identity"
EARLIER_ID, EARLIER_KEY = "00000000000000e1", bytes(range(2, 34))
NEW_ID, NEW_KEY = "0123456789abcdef", bytes(range(1, 33))
OTHER_ID = "fedcba9876543210"


class PulledCable(RawRepl):
    """A RawRepl whose port closes at a chosen moment of the write: when code containing
    `marker` is sent (before: the board never runs it), or right after the Ctrl-D that makes
    the board run it (after: the board runs it, the answer is lost)."""

    def __init__(self, port: str, marker: str, *, after_run: bool = False, **kwargs):
        super().__init__(port, **kwargs)
        self.marker = marker.encode()
        self.after_run = after_run
        self.enabled = True
        self.armed = False
        self.pulled = False

    def _write(self, data: bytes) -> None:
        if self.enabled and not self.pulled and self.marker in data:
            if not self.after_run:
                self._pull()
            else:
                self.armed = True
        super()._write(data)
        if self.armed and data.endswith(CTRL_D):
            self.armed = False
            self._pull()

    def _pull(self) -> None:
        self.pulled = True
        assert self._serial is not None
        self._serial.close()


@pytest.fixture
def store(tmp_path):
    return store_mod.Store(store_mod.connect(tmp_path / "gw.sqlite3"))


def registry(store):
    return {(d.device_id, d.subject, bytes(d.key)) for d in store.devices()}


def pair(store, device_id, key, subject):
    with store.transaction():
        apply_pairing(store, plan_pairing(store, device_id, key, subject), 1)


def on_board(repl: RawRepl) -> bytes | None:
    return repl.get_file(IDENTITY_PATH) if repl.exists(IDENTITY_PATH) else None


def give_earlier_identity(repl, store):
    provision(repl, EARLIER_ID, EARLIER_KEY, data_dir=DATA_DIR)
    pair(store, EARLIER_ID, EARLIER_KEY, "s-1")
    return identity_text(EARLIER_ID, EARLIER_KEY).encode()


def assert_untouched(repl, store, earlier, before):
    assert on_board(repl) == earlier
    assert not repl.exists(IDENTITY_PATH + ".part")
    assert registry(store) == before


def test_success_pairs_and_writes(board, store):
    result = provision(board, NEW_ID, NEW_KEY, data_dir=DATA_DIR,
                       record=RegistryRecord(store, "s-1", 2))
    assert on_board(board) == identity_text(NEW_ID, NEW_KEY).encode()
    assert registry(store) == {(NEW_ID, "s-1", NEW_KEY)}
    assert store.device(NEW_ID).skin_type == 2 and result.replacements == ()


def test_a_subject_clash_is_refused_before_the_board_is_written(board, store):
    pair(store, OTHER_ID, NEW_KEY, "s-1")
    before = registry(store)
    with pytest.raises(PairingRefused, match="subject s-1 is already paired with device "
                                            f"{OTHER_ID}; pass --reuse-subject"):
        provision(board, NEW_ID, NEW_KEY, data_dir=DATA_DIR, record=RegistryRecord(store, "s-1"))
    assert_untouched(board, store, None, before)
    result = provision(board, NEW_ID, NEW_KEY, data_dir=DATA_DIR,
                       record=RegistryRecord(store, "s-1", reuse_subject=True))
    assert registry(store) == {(NEW_ID, "s-1", NEW_KEY)}
    assert result.replacements == (f"subject s-1 was worn with device {OTHER_ID}; that device "
                                   "is unpaired (its stored samples are kept)",)


def test_reassigning_a_device_needs_the_flag_and_says_so(board, store):
    earlier = give_earlier_identity(board, store)
    before = registry(store)
    with pytest.raises(PairingRefused, match=f"device {EARLIER_ID} is already paired with "
                                            "subject s-1; pass --reassign"):
        provision(board, EARLIER_ID, EARLIER_KEY, data_dir=DATA_DIR, replace_identity=True,
                  record=RegistryRecord(store, "s-2"))
    assert_untouched(board, store, earlier, before)
    result = provision(board, EARLIER_ID, NEW_KEY, data_dir=DATA_DIR, replace_identity=True,
                       record=RegistryRecord(store, "s-2", reassign=True))
    assert registry(store) == {(EARLIER_ID, "s-2", NEW_KEY)}
    assert result.replaced
    assert result.replacements == (f"device {EARLIER_ID} was paired with subject s-1; it now "
                                   "belongs to s-2",)


def test_a_read_only_registry_refuses_before_the_board_is_written(board, store):
    store.conn.execute("PRAGMA query_only=ON")   # what a read-only file or mount does
    with pytest.raises(store_mod.StoreError, match="registry cannot be written"):
        provision(board, NEW_ID, NEW_KEY, data_dir=DATA_DIR, record=RegistryRecord(store, "s-1"))
    assert_untouched(board, store, None, set())


def test_an_existing_identity_is_refused_before_the_registry_is_touched(board, store):
    earlier = give_earlier_identity(board, store)
    before = registry(store)
    with pytest.raises(IdentityExistsError):
        provision(board, NEW_ID, NEW_KEY, data_dir=DATA_DIR, record=RegistryRecord(store, "s-9"))
    assert_untouched(board, store, earlier, before)


@pytest.mark.parametrize("earlier_identity", [False, True])
@pytest.mark.parametrize("marker", ["_dt_open('", "_dt_w(b'", "_dt_close('"])
def test_port_closed_during_the_write_leaves_both_as_they_were(board_target, store, marker,
                                                               earlier_identity):
    repl = PulledCable(board_target.port, marker, timeout_s=10)
    with repl:
        repl.enabled = False
        earlier = give_earlier_identity(repl, store) if earlier_identity else None
        before = registry(store)
        repl.enabled = True
        with pytest.raises(ProvisionError) as caught:
            provision(repl, NEW_ID, NEW_KEY, data_dir=DATA_DIR, replace_identity=True,
                      record=RegistryRecord(store, "s-2", reassign=True, reuse_subject=True))
        assert repl.pulled
        message = str(caught.value)
        assert board_target.port in message and "the registry is unchanged" in message
        assert ("keeps its earlier identity" if earlier_identity else "still has no identity") \
            in message
        assert_untouched(repl, store, earlier, before)   # checked on a new connection
        repl.remove(SCRATCH_DIR, recursive=True)


def test_port_closed_after_the_board_renamed_the_file_commits(board_target, store):
    """The rename ran, its answer was lost: the board holds the new identity, so it is paired."""
    with PulledCable(board_target.port, "_dt_close('", after_run=True, timeout_s=10) as repl:
        result = provision(repl, NEW_ID, NEW_KEY, data_dir=DATA_DIR,
                           record=RegistryRecord(store, "s-1"))
        assert repl.pulled and result.device_id == NEW_ID
        assert on_board(repl) == identity_text(NEW_ID, NEW_KEY).encode()
        assert registry(store) == {(NEW_ID, "s-1", NEW_KEY)}
        repl.remove(SCRATCH_DIR, recursive=True)


def test_a_board_that_raises_leaves_the_registry_unchanged(board, store):
    board.put_file(b"not a directory", DATA_DIR)   # a file where the data directory goes
    with pytest.raises(ProvisionError, match="the board raised OSError") as caught:
        provision(board, NEW_ID, NEW_KEY, data_dir=DATA_DIR, record=RegistryRecord(store, "s-1"))
    assert "the registry is unchanged" in str(caught.value)
    assert registry(store) == set()
    assert board.get_file(DATA_DIR) == b"not a directory"


class PairedMeanwhile(RegistryRecord):
    """Another process pairs the subject between prepare() and commit()."""

    def commit(self, device_id, key):
        other = store_mod.Store(store_mod.connect(self.db_path))
        pair(other, OTHER_ID, NEW_KEY, self.subject)
        other.conn.close()
        super().commit(device_id, key)


@pytest.mark.parametrize("earlier_identity", [False, True])
def test_a_registry_refusal_at_commit_puts_the_board_back(board, store, tmp_path,
                                                          earlier_identity):
    earlier = give_earlier_identity(board, store) if earlier_identity else None
    record = PairedMeanwhile(store, "s-2")
    record.db_path = tmp_path / "gw.sqlite3"
    with pytest.raises(ProvisionError, match="registry refused the pairing after the board was "
                                             "written") as caught:
        provision(board, NEW_ID, NEW_KEY, data_dir=DATA_DIR, replace_identity=True,
                  record=record)
    assert ("earlier identity was put back" if earlier_identity
            else "identity was removed from the board again") in str(caught.value)
    assert on_board(board) == earlier
    assert (NEW_ID, "s-2", NEW_KEY) not in registry(store)


def test_a_database_error_at_commit_puts_the_board_back(board, store):
    class ReadOnlyAtCommit(RegistryRecord):
        def commit(self, device_id, key):
            self.store.conn.execute("PRAGMA query_only=ON")
            super().commit(device_id, key)

    with pytest.raises(ProvisionError, match="cannot be written"):
        provision(board, NEW_ID, NEW_KEY, data_dir=DATA_DIR, record=ReadOnlyAtCommit(store, "s"))
    assert on_board(board) is None
    store.conn.execute("PRAGMA query_only=OFF")
    assert registry(store) == set()


def test_key_file_record_is_written_only_with_the_board(board_target, tmp_path):
    key_path = tmp_path / "keys" / f"{NEW_ID}.key"
    with PulledCable(board_target.port, "_dt_w(b'", timeout_s=10) as repl:
        with pytest.raises(ProvisionError, match=f"no key file was written \\({key_path}\\)"):
            provision(repl, NEW_ID, NEW_KEY, data_dir=DATA_DIR, record=KeyFileRecord(key_path))
        assert not key_path.exists() and list(key_path.parent.iterdir()) == []
        repl.enabled = False
        provision(repl, NEW_ID, NEW_KEY, data_dir=DATA_DIR, record=KeyFileRecord(key_path))
        assert key_path.read_text() == NEW_KEY.hex() + "\n"
        assert key_path.stat().st_mode & 0o777 == 0o600
        repl.remove(SCRATCH_DIR, recursive=True)


def test_pairing_clash_without_provisioning_is_not_an_sqlite_error(store):
    pair(store, OTHER_ID, NEW_KEY, "s-1")
    with pytest.raises(PairingRefused) as caught:
        plan_pairing(store, NEW_ID, NEW_KEY, "s-1")
    assert not isinstance(caught.value, sqlite3.Error) and caught.value.field == "subject"


@pytest.mark.parametrize("subject", ["s-1", "s-2"])
def test_a_new_identity_retires_the_one_it_overwrites(board, store, subject):
    """The board's earlier device id exists nowhere once overwritten: it is unpaired in the
    same commit (no ghost pairing), and its subject is free to take without a flag."""
    give_earlier_identity(board, store)
    result = provision(board, NEW_ID, NEW_KEY, data_dir=DATA_DIR, replace_identity=True,
                       record=RegistryRecord(store, subject))
    assert registry(store) == {(NEW_ID, subject, NEW_KEY)}
    assert result.replacements == (f"device {EARLIER_ID} (subject s-1) is unpaired: the board "
                                   "no longer carries its identity (its stored samples are "
                                   "kept)",)


class InterruptedAfterRename(PulledCable):
    """The technician presses Ctrl-C just after the board renamed the new identity in."""

    def _pull(self) -> None:
        self.pulled = True
        raise KeyboardInterrupt


def test_an_interrupt_after_the_write_puts_both_back(board_target, store, tmp_path):
    key_path = tmp_path / "k.key"
    with InterruptedAfterRename(board_target.port, "_dt_close('", after_run=True,
                                timeout_s=10) as repl:
        repl.enabled = False
        earlier = give_earlier_identity(repl, store)
        before = registry(store)
        repl.enabled = True
        with pytest.raises(KeyboardInterrupt):
            provision(repl, NEW_ID, NEW_KEY, data_dir=DATA_DIR, replace_identity=True,
                      record=RegistryRecord(store, "s-2"))
        assert_untouched(repl, store, earlier, before)
        repl.pulled, repl.enabled = False, True
        with pytest.raises(KeyboardInterrupt):
            provision(repl, NEW_ID, NEW_KEY, data_dir=DATA_DIR, replace_identity=True,
                      record=KeyFileRecord(key_path))
        assert on_board(repl) == earlier and list(tmp_path.glob("k.key*")) == []
        repl.remove(SCRATCH_DIR, recursive=True)


class FaultyFlash(RawRepl):
    """A board whose filesystem corrupts what is written to `target` (the copy is written
    and stored, but with one byte changed)."""

    def __init__(self, port: str, target: str, **kwargs):
        super().__init__(port, **kwargs)
        self.target = target
        self.enabled = True

    def put_file(self, source, remote_path, **kwargs):
        if self.enabled and remote_path == self.target and isinstance(source, bytes):
            source = source[:-2] + (b"e" if source[-2:-1] == b"f" else b"f") + b"\n"
            self.enabled = False
        return super().put_file(source, remote_path, **kwargs)


@pytest.mark.parametrize("earlier_identity", [False, True])
def test_an_identity_that_reads_back_wrong_is_put_back(board_target, store, earlier_identity):
    with FaultyFlash(board_target.port, IDENTITY_PATH, timeout_s=10) as repl:
        repl.enabled = False
        earlier = give_earlier_identity(repl, store) if earlier_identity else None
        before = registry(store)
        repl.enabled = True
        with pytest.raises(ProvisionError, match="reads back differently") as caught:
            provision(repl, NEW_ID, NEW_KEY, data_dir=DATA_DIR, replace_identity=True,
                      record=RegistryRecord(store, "s-2", reuse_subject=True))
        assert ("earlier identity was put back" if earlier_identity
                else "identity was removed from the board again") in str(caught.value)
        assert_untouched(repl, store, earlier, before)
        repl.remove(SCRATCH_DIR, recursive=True)
