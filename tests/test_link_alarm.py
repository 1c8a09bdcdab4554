"""A `link` alarm (a patch's connection task failed) clears once a new session of that patch
streams again, not only when that session ends: found by the chaos run's disk-full fault,
where saving a SET_TIME anchor on a full disk failed the task and the alarm stayed up while
the patch streamed normally afterwards."""

import pytest
from gateway_harness import GatewayRig, wait_for

from gateway.store import DiskFullError

pytestmark = pytest.mark.slow


async def test_a_link_alarm_clears_while_the_next_session_streams(tmp_path, monkeypatch):
    from gateway import service
    monkeypatch.setattr(service, "RETRY_STORE_FAILED_S", 1.0)   # the test need not wait 10 s
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
        await wait_for(lambda: gateway.alarms.is_up("link", device), 30, "the link alarm")
        slot = gateway.slots[device]
        stored = gateway.store.sample_count(device)
        await wait_for(lambda: gateway.store.sample_count(device) > stored + 2, 40,
                       "the next session to stream")
        await wait_for(lambda: not gateway.alarms.is_up("link", device), 10,
                       "the link alarm to clear")
        assert slot.task is not None and not slot.task.done(), "cleared while connected"
        assert rig.connected(0)
