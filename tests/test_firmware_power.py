"""The patch's battery/power policy (firmware/power.py): NORMAL / LOW / CRITICAL with
hysteresis on the MAX17048 state of charge; LOW and CRITICAL status flags; on CRITICAL the
flash log is flushed and every channel but the battery gauge pauses, the samples not taken
reaching the gateway as a gap once sampling resumes. On CPython (virtual time, a real
FlashLog), under the real MicroPython VM, and end to end with a virtual patch."""

from __future__ import annotations

import asyncio
import heapq
import shutil

import pytest

from firmware import aio, power
from firmware import protocol_ids as ids
from firmware.flash_log import FlashLog
from firmware.power import PowerManager, next_state
from firmware.sampler import Sampler
from firmware.sampling_config import SamplingConfig

# the states are the status flags they set (underscored: folded away by mpy-cross)
NORMAL, LOW, CRITICAL = power._NORMAL, power._LOW, power._CRITICAL
N, L, C = NORMAL, LOW, CRITICAL


def soc(pct: float) -> int:
    """SOC register value (1/256 %) as the sampler logs it; < 0 stays 'unknown'."""
    return int(pct * 256) if pct >= 0 else -1


# SOC readings in %, one after the other from NORMAL, and the state after each
POLICY_CASES = {
    "normal down to low": ([100, 50, 20, 15, 14.99], [N, N, N, N, L]),
    "low needs more than 20 %": ([14, 16, 20, 20.01], [L, L, L, N]),
    "low to critical and back": ([14, 5, 4.99, 6, 8, 8.01, 15, 20.5], [L, L, C, C, C, L, L, N]),
    "critical straight to normal": ([3, 25], [C, N]),
    "critical back to low, low again to critical": ([3, 10, 4, 12, 21], [C, L, C, L, N]),
    "one LSB either side of each threshold": (
        [15 - 1 / 256, 20, 20 + 1 / 256, 5 - 1 / 256, 8, 8 + 1 / 256],
        [L, L, N, C, C, L]),
    "unknown SOC keeps the state": ([-1, 3, -1, 25, -1], [N, C, C, N, N]),
    "empty and full register": ([0, 100, 255], [C, N, N]),
}


def run_policy(readings):
    state, states = NORMAL, []
    for pct in readings:
        state = next_state(state, soc(pct))
        states.append(state)
    return states


@pytest.mark.parametrize("readings,expected", POLICY_CASES.values(), ids=POLICY_CASES.keys())
def test_policy_has_hysteresis(readings, expected):
    assert run_policy(readings) == expected


def test_thresholds_are_module_constants():
    assert (power._LOW_BELOW_PCT, power._LOW_CLEAR_ABOVE_PCT,
            power._CRITICAL_BELOW_PCT, power._CRITICAL_CLEAR_ABOVE_PCT) == (15, 20, 5, 8)


def test_states_are_the_flags_they_set_the_next_free_status_bits():
    assert ids.ERR_BATTERY_LOW == ids.ERR_BATTERY_GAUGE << 1
    assert ids.ERR_BATTERY_CRITICAL == ids.ERR_BATTERY_GAUGE << 2
    assert NORMAL == 0
    assert LOW == ids.ERR_BATTERY_LOW
    assert CRITICAL == ids.ERR_BATTERY_LOW | ids.ERR_BATTERY_CRITICAL


class SpyLog:
    def __init__(self):
        self.next_seq = 0
        self.flushes = 0

    def flush(self):
        self.flushes += 1


class StubSampler:
    def __init__(self):
        self.error_flags = ids.ERR_LOG_FULL | ids.ERR_UV_SENSOR   # not power's: kept
        self.paused = False
        self.battery_soc = -1


class StubLink:
    """What PowerManager uses of firmware.ble_link.PatchLink."""

    def __init__(self, sampler, log, on_refresh=None):
        self.sampler = sampler
        self.log = log
        self.on_refresh = on_refresh

    def _refresh_status(self):
        if self.on_refresh is not None:
            self.on_refresh()


def test_manager_sets_flags_pauses_and_flushes_on_entering_critical():
    sampler, log, changes = StubSampler(), SpyLog(), []
    manager = PowerManager(StubLink(sampler, log, lambda: changes.append(
        (manager.state, sampler.error_flags, sampler.paused, log.flushes))))
    other = ids.ERR_LOG_FULL | ids.ERR_UV_SENSOR
    assert manager.update(soc(50)) == NORMAL and changes == []
    manager.update(soc(12))
    assert (sampler.error_flags, sampler.paused, log.flushes) == (
        other | ids.ERR_BATTERY_LOW, False, 0)
    manager.update(soc(4))
    # the log was flushed before the status record was refreshed
    assert changes[-1] == (CRITICAL, other | ids.ERR_BATTERY_LOW | ids.ERR_BATTERY_CRITICAL,
                           True, 1)
    manager.update(soc(4))
    assert log.flushes == 1                      # nothing new logged: no flash sync
    log.next_seq = 1                             # the battery gauge logged a sample
    manager.update(soc(4))
    manager.update(soc(4))
    assert log.flushes == 2
    manager.update(soc(10))
    assert (sampler.error_flags, sampler.paused) == (other | ids.ERR_BATTERY_LOW, False)
    manager.update(soc(30))
    assert (sampler.error_flags, sampler.paused) == (other, False)
    assert [c[0] for c in changes] == [LOW, CRITICAL, LOW, NORMAL]
    assert log.flushes == 2


# --- the sampler paused, in virtual time -------------------------------------------------------


class VirtualTime:
    """aio.sleep_ms on a virtual clock: run_until() wakes sleepers in time order (ties in the
    order they went to sleep) and lets each run until it sleeps again."""

    def __init__(self):
        self.ms = 0
        self._queue: list = []
        self._n = 0

    def now(self):   # the sampler's tick clock: 100 ms ticks
        return self.ms // ids.TICK_MS

    async def sleep_ms(self, ms):
        future = asyncio.get_running_loop().create_future()
        self._n += 1
        heapq.heappush(self._queue, (self.ms + ms, self._n, future))
        await future

    async def _settle(self):
        for _ in range(5):
            await asyncio.sleep(0)

    async def run_until(self, end_ms):
        await self._settle()
        while self._queue and self._queue[0][0] <= end_ms:
            wake_ms, _, future = heapq.heappop(self._queue)
            self.ms = wake_ms
            future.set_result(None)
            await self._settle()
        self.ms = end_ms


class FakeSensor:
    """Always ready; counts conversions."""

    def __init__(self, read):
        self._read = read
        self.conversions = 0

    def start(self):
        self.conversions += 1

    def ready(self):
        return True

    def read_raw(self):
        return self._read()


def battery_pct_at(ms):
    # 50 %, then 4 % from the reading at 30 s to the one at 90 s (charger plugged in)
    return 4 if 30_000 <= ms < 90_000 else 50


async def test_critical_pauses_sensors_and_reports_what_was_not_taken_as_gaps(
        tmp_path, monkeypatch):
    vt = VirtualTime()
    monkeypatch.setattr(aio, "sleep_ms", vt.sleep_ms)
    monkeypatch.setattr(power, "CHECK_MS", 4000)
    log_dir = tmp_path / "log"
    log = FlashLog(str(log_dir), boot_id=3)
    # temperature every 10 s, UV 5 s, hydration 60 s, battery 30 s; checks every 4 s
    config = SamplingConfig({ids.CFG_BATTERY_PERIOD_S: 30})
    seen = []
    sampler = Sampler(log, vt, config, lambda ch, v: seen.append(ch))
    snapshots = {}

    def on_change():
        if manager.state == CRITICAL:   # what a brown-out right now would leave on flash
            shutil.copytree(log_dir, tmp_path / "at-critical")
            snapshots["at-critical"] = log.next_seq

    manager = PowerManager(StubLink(sampler, log, on_change))
    sensors = {
        ids.CH_TEMPERATURE: FakeSensor(lambda: 4300 + vt.now() // 100),
        ids.CH_UV: FakeSensor(lambda: 10),
        ids.CH_HYDRATION: FakeSensor(lambda: 50_000),
        ids.CH_BATTERY: FakeSensor(lambda: soc(battery_pct_at(vt.ms))),
    }
    tasks = [asyncio.create_task(sampler.run_channel(ch, s)) for ch, s in sensors.items()]
    tasks.append(asyncio.create_task(manager.run()))
    states = {}
    for t_s in (28, 32, 64, 88, 92, 130):
        await vt.run_until(t_s * 1000)
        states[t_s] = manager.state
        if t_s == 64:   # the battery sample at 60 s went to flash at the check after it
            shutil.copytree(log_dir, tmp_path / "at-64s")
            snapshots["at-64s"] = log.next_seq
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    # the battery reading at 30 s (4 %) is acted on at the check at 32 s; the one at 90 s
    # (50 %) at the check at 92 s
    assert states == {28: N, 32: C, 64: C, 88: C, 92: N, 130: N}
    assert not sampler.paused
    assert not sampler.error_flags & (ids.ERR_BATTERY_LOW | ids.ERR_BATTERY_CRITICAL)

    by_channel: dict[int, list[int]] = {0: [], 1: [], 2: [], 3: []}
    seq_of = {}
    for seq in range(log.next_seq):
        ch, tick = log.channel(seq), log.tick(seq)
        by_channel[ch].append(tick)
        seq_of.setdefault((ch, tick), seq)
    # paused from 32 s to 92 s: no sensor but the gauge is read (no conversion) or logged
    assert by_channel[0] == [0, 100, 200, 300, 1000, 1100, 1200, 1300]
    assert by_channel[1] == [t for t in range(0, 1301, 50) if not 320 < t < 920]
    assert by_channel[2] == [0, 1200]
    assert by_channel[3] == [0, 300, 600, 900, 1200]       # the gauge never pauses
    for ch in (0, 1, 2, 3):
        assert sensors[ch].conversions == len(by_channel[ch])
    assert seen.count(0) == 8                               # live values pause too

    # the samples not taken, their counts and tick range, in gaps just before the next sample
    # logged: while paused that is the battery gauge's (so the counts are on flash should the
    # cell give out), after the pause each channel's first sample. Same-tick order between
    # tasks decides which side of a battery sample a count falls.
    gaps = {g.seq_at: g for g in log.gaps()}
    expected = {
        seq_of[(3, 600)]: ((2, 5, 1, 0), 350, 600),     # temperature 40, 50 s; UV 35..55 s;
                                                        # hydration 60 s
        seq_of[(3, 900)]: ((3, 6, 0, 0), 600, 850),     # temperature 60..80 s; UV 60..85 s
        seq_of[(1, 950)]: ((0, 1, 0, 0), 900, 900),     # UV at 90 s
        seq_of[(0, 1000)]: ((1, 0, 0, 0), 900, 900),    # temperature at 90 s
    }
    assert {seq: (tuple(g.counts), g.first_tick, g.last_tick)
            for seq, g in gaps.items()} == expected
    assert {g.boot_id for g in gaps.values()} == {3}
    assert sum(sum(g.counts) for g in gaps.values()) == 19

    # the flush: a copy of the flash taken when CRITICAL was entered (and at 64 s, after a
    # battery sample) holds every sample taken until then, although fewer than flush_every
    # had been appended (the log alone would have kept them in RAM)
    assert snapshots["at-critical"] == 14 < log.flush_every
    for name, held in snapshots.items():
        crashed = FlashLog(str(tmp_path / name), boot_id=4)
        assert [(crashed.channel(s), crashed.tick(s), crashed.value(s)) for s in range(held)] \
            == [(log.channel(s), log.tick(s), log.value(s)) for s in range(held)], name
        crashed.close()
    log.close()


async def test_pause_gap_merges_with_a_log_full_gap_at_the_same_sample(tmp_path):
    # Full log and critical battery at once: both reasons' samples not taken end up in the
    # one gap before the channel's next logged sample.
    class Clock:
        tick = 0

        def now(self):
            return self.tick

    log = FlashLog(str(tmp_path / "log"), boot_id=1)
    clock = Clock()
    sampler = Sampler(log, clock, SamplingConfig(), lambda ch, v: None)
    sampler.record(ids.CH_TEMPERATURE, 4300)
    sampler._skipped[ids.CH_TEMPERATURE] = 5     # as run_channel leaves it while full
    manager = PowerManager(StubLink(sampler, log))
    manager.update(soc(3))
    for clock.tick in (100, 200, 300):
        assert sampler.skip_paused(ids.CH_TEMPERATURE) == 10_000
    manager.update(soc(30))
    clock.tick = 400
    sampler.record(ids.CH_TEMPERATURE, 4301)
    [gap] = log.gaps()
    assert (gap.seq_at, tuple(gap.counts), gap.first_tick, gap.last_tick) == (
        1, (8, 0, 0, 0), 0, 400)
    log.close()


# --- under the real MicroPython VM ----------------------------------------------------------


def test_policy_and_pause_under_micropython(micropython):
    cases = [[soc(p) for p in readings] for readings, _ in POLICY_CASES.values()]
    out = micropython(f"""
import gc, micropython, os
from firmware import power
from firmware import protocol_ids as ids
from firmware.flash_log import FlashLog
from firmware.sampler import Sampler
from firmware.sampling_config import SamplingConfig

for readings in {cases!r}:
    state, states = 0, []
    for s in readings:
        state = power.next_state(state, s)
        states.append(state)
    print("states", states)

class Clock:
    def __init__(self):
        self.tick = 0
    def now(self):
        return self.tick

os.mkdir("/data")
log = FlashLog("/data/log", boot_id=2)
clock = Clock()
sampler = Sampler(log, clock, SamplingConfig(), lambda ch, v: None)
class Link:
    def __init__(self):
        self.sampler, self.log, self.refreshes = sampler, log, 0
    def _refresh_status(self):
        self.refreshes += 1

link = Link()
manager = power.PowerManager(link)
sampler.record(ids.CH_BATTERY, {soc(50)})
manager.update(sampler.battery_soc)
gc.collect()
micropython.heap_lock()            # a check that changes nothing allocates nothing
try:
    for i in range(100):
        manager.update(sampler.battery_soc)
finally:
    micropython.heap_unlock()
sampler.record(ids.CH_BATTERY, {soc(4)})
manager.update(sampler.battery_soc)
print("critical", manager.state, sampler.paused, sampler.error_flags, len(log), link.refreshes)
gc.collect()
micropython.heap_lock()
try:
    for i in range(100):
        manager.update(sampler.battery_soc)
        clock.tick = 10 + i
        sampler.skip_paused(ids.CH_UV)
finally:
    micropython.heap_unlock()
sampler.record(ids.CH_BATTERY, {soc(30)})
manager.update(sampler.battery_soc)
clock.tick = 200
sampler.record(ids.CH_UV, 7)
g = log.gaps()[0]
print("resumed", manager.state, sampler.paused, sampler.error_flags,
      "gap", g.seq_at, list(g.counts), g.first_tick, g.last_tick)
for i in range(40):                # warm: the log has started its blocks and segment
    sampler.record(i % 4, 4300 + i)
gc.collect()
micropython.heap_lock()            # a sample's way into the log allocates nothing
try:
    for i in range(400):
        clock.tick = 300 + i
        sampler.record(i % 4, 4300 + i % 50)
finally:
    micropython.heap_unlock()
print("recorded", len(log), sampler.error_flags)
""")
    states = [line for line in out.splitlines() if line.startswith("states")]
    assert states == [f"states {expected}" for _, expected in POLICY_CASES.values()]
    assert f"critical {CRITICAL} True {CRITICAL} 2 1" in out
    # the UV samples not taken went out with the battery sample logged while still paused
    # (seq 2), so a brown-out then would not have lost their count
    assert "resumed 0 False 0 gap 2 [0, 100, 0, 0] 10 109" in out
    assert "recorded 444 0" in out


# --- end to end: a virtual patch whose cell runs down, over Bumble --------------------------


class Battery:
    """Sets the state of charge the patch's MAX17048 emulator reports, at once (a quick-start
    makes the emulated gauge convert now instead of at its next 45 s hibernate conversion)."""

    def __init__(self, virtual, pct):
        self.virtual = virtual
        self.pct = pct
        virtual.environment.battery_soc_pct_at = lambda t_s: self.pct

    def set(self, pct):
        from sensor_drivers.max17048 import MODE_QUICK_START, REG_MODE
        from simulation.virtual_patch import monotonic_ms

        self.pct = pct
        self.virtual.chips["MAX17048"].write_register(REG_MODE, MODE_QUICK_START, monotonic_ms())


async def test_status_record_carries_the_battery_flags(tmp_path, monkeypatch):
    from bumble.core import UUID
    from bumble.device import Peer

    from gateway.protocol.constants import STATUS_CHAR_UUID, ErrorFlag
    from gateway.protocol.control import decode_status
    from simulation.virtual_patch import VirtualPatch
    from simulation.virtual_radio import VirtualRadio
    from tests.gateway_harness import wait_for

    monkeypatch.setattr(power, "CHECK_MS", 50)
    radio = VirtualRadio(seed=5)
    virtual = VirtualPatch(radio, "0a1b2c3d4e5f6072", bytes(32), tmp_path / "patch",
                           config_overrides={ids.CFG_BATTERY_PERIOD_S: 1})
    battery = Battery(virtual, 3.0)
    await virtual.start()
    central = await radio.new_device("clinic-app")
    try:
        await wait_for(lambda: virtual.patch.power.state == CRITICAL, what="critical")
        connection = await central.connect(virtual.bumble_device.random_address, timeout=5)
        peer = Peer(connection)
        await peer.discover_services()
        for service in peer.services:
            await service.discover_characteristics()
        [status_char] = peer.get_characteristics_by_uuid(UUID(STATUS_CHAR_UUID))

        async def status():
            return decode_status(bytes(await peer.read_value(status_char)))

        read = await status()
        assert read.error_flags & (ErrorFlag.BATTERY_LOW | ErrorFlag.BATTERY_CRITICAL) == (
            ErrorFlag.BATTERY_LOW | ErrorFlag.BATTERY_CRITICAL)
        assert read.battery_pct == 3
        battery.set(12.0)
        await wait_for(lambda: virtual.patch.power.state == LOW, what="low")
        read = await status()
        assert ErrorFlag.BATTERY_LOW in read.error_flags
        assert ErrorFlag.BATTERY_CRITICAL not in read.error_flags
        battery.set(25.0)
        await wait_for(lambda: virtual.patch.power.state == NORMAL, what="normal")
        read = await status()
        assert not read.error_flags & (ErrorFlag.BATTERY_LOW | ErrorFlag.BATTERY_CRITICAL)
        assert read.battery_pct == 25
        await connection.disconnect()
    finally:
        await virtual.stop()
        await radio.close()


async def test_gateway_drains_while_critical_and_stores_the_pause_as_a_gap(tmp_path, monkeypatch):
    from tests.gateway_harness import GatewayRig, wait_for

    monkeypatch.setattr(power, "CHECK_MS", 50)
    # temperature, UV and the battery every second; frames flushed every second
    config = {ids.CFG_TEMP_PERIOD_S: 1, ids.CFG_UV_PERIOD_S: 1, ids.CFG_BATTERY_PERIOD_S: 1,
              ids.CFG_FLUSH_INTERVAL_S: 1}
    async with GatewayRig(tmp_path, patches=1, patch_config=config) as rig:
        device_id = rig.identities[0][0]
        virtual = rig.patches[0]
        battery = Battery(virtual, 60.0)
        patch = virtual.patch
        calls = []
        append_gap = patch.log.append_gap

        def recording_append_gap(channel, first_tick, last_tick, count):
            calls.append((patch.log.next_seq, channel, first_tick, last_tick, count))
            return append_gap(channel, first_tick, last_tick, count)

        patch.log.append_gap = recording_append_gap
        gateway = await rig.start_gateway()
        store = gateway.store

        def stored(channel):
            return store.conn.execute(
                "SELECT seq, tick FROM samples WHERE device_id=? AND channel=? ORDER BY seq",
                (device_id, channel)).fetchall()

        await wait_for(lambda: stored(0) and stored(1) and stored(3), 30, "live samples")
        battery.set(3.0)
        await wait_for(lambda: patch.power.state == CRITICAL, what="critical")
        paused_at = patch.log.next_seq
        # the link stays up: battery samples taken while critical reach the store
        await wait_for(lambda: len([s for s, _ in stored(3) if s >= paused_at]) >= 3, 30,
                       "battery samples while critical")
        # each battery sample taken while paused carries the counts so far (a brown-out
        # would not lose them)
        await wait_for(lambda: len({c[0] for c in calls}) >= 2, what="counts recorded while paused")
        await wait_for(lambda: {c[0] for c in calls} <= {s for s, _ in stored(3)}, 10,
                       "the battery samples carrying them")
        assert {c[1] for c in calls} <= {0, 1, 2}
        battery.set(50.0)
        await wait_for(lambda: patch.power.state == NORMAL, what="normal")
        await wait_for(lambda: {c[1] for c in calls} >= {0, 1}, what="gaps recorded")
        await wait_for(lambda: patch.log.gaps() == [], 30, "the ACK that covers the gaps")

        # what the sampler recorded is exactly what the gateway stored, gap by gap
        expected = {}
        for seq_at, channel, first_tick, last_tick, count in calls:
            counts, t0, t1 = expected.get(seq_at, ([0, 0, 0, 0], first_tick, last_tick))
            counts[channel] += count
            expected[seq_at] = (counts, min(t0, first_tick), max(t1, last_tick))
        gaps = store.gaps(device_id)
        assert {g.seq_at: (list(g.counts), g.first_tick, g.last_tick) for g in gaps} == expected
        assert {g.boot_id for g in gaps} == {patch.boot_state.boot_id}
        for g in gaps:       # the ACK of the gap can come before the channel's next sample
            for channel in (ch for ch in range(3) if g.counts[ch]):
                await wait_for(lambda ch=channel, g=g: max(t for _, t in stored(ch)) > g.last_tick,
                               30, "samples after the gap")
        held = {s for ch in range(4) for s, _ in stored(ch)}
        for g in gaps:
            assert g.counts[3] == 0                         # the gauge never pauses
            assert g.seq_at in held                         # just before a stored sample
            for channel in (ch for ch in range(3) if g.counts[ch]):
                ticks = [t for _, t in stored(channel)]
                # the gap lies in the hole of that channel's samples: none inside it
                assert not [t for t in ticks if g.first_tick <= t <= g.last_tick]
                assert min(ticks) < g.first_tick and max(ticks) > g.last_tick
        battery_ticks = [t for _, t in stored(3)]
        first = min(g.first_tick for g in gaps)
        last = max(g.last_tick for g in gaps)
        assert len([t for t in battery_ticks if first <= t <= last]) >= 2
