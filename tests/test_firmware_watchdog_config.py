"""Firmware watchdog (fed only while every task lives) and SET_CONFIG persistence."""

import asyncio

from firmware import watchdog as watchdog_mod
from firmware.sampling_config import SamplingConfig
from firmware.watchdog import TaskWatchdog


class CountingWdt:
    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.feeds = 0

    def feed(self):
        self.feeds += 1


async def test_watchdog_stops_feeding_when_a_task_ends(monkeypatch):
    monkeypatch.setattr(watchdog_mod, "FEED_EVERY_MS", 10)
    wdts = []
    dog = TaskWatchdog(lambda ms: wdts.append(CountingWdt(ms)) or wdts[-1])
    forever = asyncio.create_task(asyncio.sleep(3600))
    doomed = asyncio.create_task(asyncio.sleep(0.05))
    dog.watch(forever)
    dog.watch(doomed)
    runner = asyncio.create_task(dog.run())
    await asyncio.sleep(0.04)
    fed_while_alive = wdts[0].feeds
    assert fed_while_alive >= 2 and wdts[0].timeout_ms == watchdog_mod.WDT_TIMEOUT_MS
    await asyncio.sleep(0.1)                      # `doomed` has ended: no more feeding
    stalled = wdts[0].feeds
    await asyncio.sleep(0.05)
    assert wdts[0].feeds == stalled and dog.starved
    for task in (runner, forever):
        task.cancel()
    await asyncio.gather(runner, forever, return_exceptions=True)


def test_config_set_by_the_gateway_survives_a_reboot(tmp_path):
    path = str(tmp_path / "config.json")
    config = SamplingConfig({1: 2}, path)
    assert config.get(1) == 2 and config.get(4) == 60
    assert config.set(4, 30)
    config.save()
    rebooted = SamplingConfig({1: 2}, path)
    assert rebooted.get(4) == 30 and rebooted.get(1) == 2


def test_corrupt_saved_config_falls_back_to_defaults(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    assert SamplingConfig(None, str(path)).get(1) == 10
    path.write_text('{"4": 0, "99": 5, "2": 7}')           # bad entries ignored, good kept
    config = SamplingConfig(None, str(path))
    assert config.get(4) == 60 and config.get(2) == 7


def test_config_persistence_under_micropython(micropython):
    out = micropython("""
import os
from firmware.sampling_config import SamplingConfig
os.mkdir("/data")
c = SamplingConfig(None, "/data/config.json")
c.set(5, 120)
c.save()
print("after reboot", SamplingConfig(None, "/data/config.json").get(5))
""")
    assert "after reboot 120" in out
