"""Nothing fails silently: the alarm registry, task supervision (log once with traceback,
alarm, restart with backoff, give up with a clear error), and the ingest cycle telling its
sessions when a cycle fails for a reason other than the disk."""

import asyncio
import logging

import pytest

from gateway.alarms import Alarms
from gateway.supervisor import SupervisorPolicy, Unrecoverable, supervise


def test_alarms_raise_once_keep_since_and_clear_once():
    alarms = Alarms()
    changes = []
    alarms.listen(changes.append)
    assert alarms.raise_("store", "disk full", 1000)
    assert not alarms.raise_("store", "disk full", 2000), "same alarm again must not flap"
    assert alarms.raise_("store", "disk full (2)", 3000)
    assert alarms.get("store").since_ms == 1000, "an updated detail keeps since"
    assert alarms.raise_("model", "NaN", 4000, source="uv_dose")
    assert alarms.payload() == [
        {"kind": "store", "detail": "disk full (2)", "since": 1000},
        {"kind": "model", "source": "uv_dose", "detail": "NaN", "since": 4000}]
    assert alarms.clear("store") and not alarms.clear("store")
    assert not alarms.clear("model")   # without its source: another alarm
    assert [(c.alarm.kind, c.raised, c.updated) for c in changes] == [
        ("store", True, False), ("store", True, True), ("model", True, False),
        ("store", False, False)]


async def test_failing_task_is_logged_once_with_traceback_alarmed_restarted_and_recovers(
        caplog):
    alarms = Alarms()
    runs = []

    async def flaky():
        runs.append(len(runs))
        if len(runs) <= 3:
            raise ValueError("bad input in the pipeline")
        await asyncio.sleep(10)

    policy = SupervisorPolicy(backoff_s=(0.01, 0.04), healthy_after_s=0.2, give_up_after=10)
    with caplog.at_level(logging.ERROR, logger="gateway.supervisor"):
        task = asyncio.create_task(supervise("ingest", flaky, alarms, policy))
        await asyncio.sleep(0.15)
        assert len(runs) == 4, "restarted after each failure"
        alarm = alarms.get("task", "ingest")
        assert alarm is not None and "ValueError: bad input in the pipeline" in alarm.detail
        await asyncio.sleep(0.3)
        assert not alarms.is_up("task", "ingest"), "cleared after running healthy"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    failures = [r for r in caplog.records if "task ingest failed" in r.getMessage()]
    assert len(failures) == 3
    assert [r.exc_info is not None for r in failures] == [True, False, False], \
        "the traceback once per kind of failure"
    assert "restart 1 in 0.0" in failures[0].getMessage()


async def test_task_that_never_recovers_ends_with_a_clear_error():
    alarms = Alarms()

    async def broken():
        raise KeyError("models")

    policy = SupervisorPolicy(backoff_s=(0.001, 0.001), healthy_after_s=5, give_up_after=4)
    with pytest.raises(Unrecoverable, match=r"task ingest failed 4 times in a row .*KeyError"):
        await supervise("ingest", broken, alarms, policy)
    assert "gave up" in alarms.get("task", "ingest").detail


async def test_fatal_types_propagate_without_restart():
    runs = []

    async def corrupt():
        runs.append(1)
        raise LookupError("damaged")

    with pytest.raises(LookupError):
        await supervise("ingest", corrupt, Alarms(), fatal=(LookupError,))
    assert runs == [1]


@pytest.mark.slow
async def test_a_bug_on_the_publishers_thread_raises_the_task_alarm_then_clears(
        tmp_path, monkeypatch):
    """paho's thread is no supervised task: a bug caught there is logged by the publisher and
    raised as the `task` alarm for `publisher` on the retained state, cleared once quiet."""
    from gateway_harness import GatewayRig, wait_for

    from gateway import service
    monkeypatch.setattr(service, "HEALTH_EVERY_S", 0.2)
    monkeypatch.setattr(service, "PUBLISHER_QUIET_S", 2.0)
    async with GatewayRig(tmp_path, patches=1) as rig:
        gateway = await rig.start_gateway()
        policy = gateway.publisher.policy
        real_on_puback, calls = policy.on_puback, []

        def failing_once(*args):
            calls.append(args)
            if len(calls) == 1:
                raise RuntimeError("injected PUBACK bug")
            return real_on_puback(*args)

        monkeypatch.setattr(policy, "on_puback", failing_once)
        await wait_for(lambda: gateway.alarms.is_up("task", "publisher"), 20, "the task alarm")
        assert "injected PUBACK bug" in gateway.alarms.get("task", "publisher").detail
        await wait_for(lambda: not gateway.alarms.is_up("task", "publisher"), 20,
                       "the alarm to clear")
