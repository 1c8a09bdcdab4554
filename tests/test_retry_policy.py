"""The link's retry policy is chosen by how a session closed (its kind), never by its text."""

from __future__ import annotations

import pytest

from gateway.patch_link import PatchLink
from gateway.retry_policy import RETRY_BY_KIND, retry_delay_s
from gateway.session import SERIAL_NUMBER_UUID, Disconnect, PatchSession
from gateway.values import CloseKind, RegisteredDevice, SessionClose

DEVICE = RegisteredDevice("3f2a0c11d4e59b07", bytes(range(32)), "s-1", 3, None)

# The delays the gateway used before close kinds existed (issue 9: no change in behaviour).
EXPECTED_DELAY_S = {
    CloseKind.MTU_TOO_SMALL: 60.0, CloseKind.IDENTITY_MISMATCH: 60.0,
    CloseKind.BAD_STATUS: 60.0, CloseKind.AUTH_FAILED: 60.0, CloseKind.REQUEST_REFUSED: 60.0,
    CloseKind.PROTOCOL_ERROR: 0.5, CloseKind.TIMEOUT: 0.5, CloseKind.LINK_LOST: 0.5,
    CloseKind.BLE_ERROR: 0.5, CloseKind.STORE_FAILED: 10.0, CloseKind.YIELDED: 10.0,
    CloseKind.CONNECT_FAILED: 1.0,
}


def link() -> PatchLink:
    return PatchLink(DEVICE, radio=None, submit=lambda _link, _batch: None,
                     committed_seq=lambda _device_id: -1)


def test_every_close_kind_has_a_rule_with_a_reason():
    assert set(RETRY_BY_KIND) == set(CloseKind) == set(EXPECTED_DELAY_S)
    assert all(rule.why for rule in RETRY_BY_KIND.values())


@pytest.mark.parametrize("kind", list(CloseKind))
def test_delay_is_chosen_by_kind_whatever_the_detail_says(kind):
    # Details that name another kind's words: the old text matching would have misfiled them.
    details = ["link lost", "patch answered SET_TIME with AUTH_FAILED", "MTU 23 < 64",
               "store refused the samples: disk full", "", kind.value]
    delays = {link().retry_delay_s(SessionClose(kind, d)) for d in details}
    assert delays == {EXPECTED_DELAY_S[kind]}


def test_a_refusal_the_session_reports_waits_for_a_technician():
    session = PatchSession(DEVICE.device_id, DEVICE.key, -1)
    [mtu] = session.start(23, 0)
    assert isinstance(mtu, Disconnect)
    session = PatchSession(DEVICE.device_id, DEVICE.key, -1)
    session.start(247, 0)
    [impostor] = session.read_result(SERIAL_NUMBER_UUID, b"ffffffffffffffff", 0)
    assert isinstance(impostor, Disconnect)
    for close in (mtu.close, impostor.close):
        assert link().retry_delay_s(close) == 60.0
        reworded = SessionClose(close.kind, "reworded for humans")
        assert link().retry_delay_s(reworded) == 60.0


def test_connect_failures_back_off_exponentially_up_to_the_cap():
    assert [retry_delay_s(CloseKind.CONNECT_FAILED, n) for n in range(1, 8)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    # Kinds without backoff ignore the count.
    assert retry_delay_s(CloseKind.AUTH_FAILED, 7) == 60.0
