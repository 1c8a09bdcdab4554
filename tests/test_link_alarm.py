"""Failures around a patch's connection that the chaos run's disk-full fault found:
- saving a SET_TIME anchor on a full disk used to fail the connection task (a traceback and a
  `link` alarm); it is a store failure: the `store` alarm, the session closed STORE_FAILED,
  the patch keeps its samples and the alarm clears once samples commit again;
- a `link` alarm (a connection task failed: a bug) clears once a new session of that patch
  streams again, not only when that session ends."""

import pytest
from gateway_harness import GatewayRig, wait_for

from gateway.store import DiskFullError
from gateway.values import CloseKind

pytestmark = pytest.mark.slow


async def test_a_full_disk_at_set_time_is_a_store_alarm_not_a_task_failure(tmp_path, monkeypatch,
                                                                           caplog):
    from gateway import service
    monkeypatch.setattr(service, "RETRY_STORE_FAILED_S", 1.0)
    async with GatewayRig(tmp_path, patches=1) as rig:
        gateway = await rig.start_gateway()
        device = rig.identities[0][0]
        save_anchor = gateway.store.save_anchor
        failures = []

        def disk_full_once(*args):
            if not failures:
                failures.append(args)
                raise DiskFullError("database write failed: database or disk is full")
            return save_anchor(*args)

        gateway.store.save_anchor = disk_full_once
        await wait_for(lambda: gateway.alarms.is_up("store"), 30, "the store alarm")
        link = gateway.slots[device].link
        await wait_for(lambda: link.last_close is not None, 10, "the session to close")
        assert link.last_close.kind is CloseKind.STORE_FAILED
        assert "clock anchor" in link.last_close.detail
        stored = gateway.store.sample_count(device)
        await wait_for(lambda: gateway.store.sample_count(device) > stored + 2, 60,
                       "the next session to stream")
        await wait_for(lambda: not gateway.alarms.is_up("store"), 10, "the store alarm to clear")
        assert not gateway.alarms.is_up("link", device)
        assert "Traceback" not in caplog.text and "connection task failed" not in caplog.text


async def test_a_link_alarm_clears_while_the_next_session_streams(tmp_path, monkeypatch):
    from gateway import service
    monkeypatch.setattr(service, "RETRY_STORE_FAILED_S", 1.0)   # the test need not wait 10 s
    async with GatewayRig(tmp_path, patches=1) as rig:
        gateway = await rig.start_gateway()
        device = rig.identities[0][0]
        link = gateway.slots[device].link
        track_drain = link._track_drain
        failures = []

        def bug_once(session):
            if not failures and session.stats.frames_ok:
                failures.append(session)
                raise ZeroDivisionError("a bug in the connection task")
            return track_drain(session)

        link._track_drain = bug_once
        await wait_for(lambda: gateway.alarms.is_up("link", device), 30, "the link alarm")
        slot = gateway.slots[device]
        stored = gateway.store.sample_count(device)
        await wait_for(lambda: gateway.store.sample_count(device) > stored + 2, 40,
                       "the next session to stream")
        await wait_for(lambda: not gateway.alarms.is_up("link", device), 10,
                       "the link alarm to clear")
        assert slot.task is not None and not slot.task.done(), "cleared while connected"
        assert rig.connected(0)
