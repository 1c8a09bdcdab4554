"""Firmware core modules (the flash log as the patch builds it, boot state, sampling config,
the sampler against a full log) on CPython and on the real MicroPython VM."""

import asyncio

import pytest

from firmware.flash_log import FlashLog
from firmware.persist import BootState
from firmware.sampling_config import SamplingConfig


def fixed_random(*values):
    """A random source that returns these 4-byte values in turn (a test's dice)."""
    queue = [v.to_bytes(4, "little") for v in values]
    return lambda n: queue.pop(0)[:n]


def test_boot_state_counts_boots_and_reads_the_legacy_seq_floor(tmp_path):
    data = str(tmp_path)
    first = BootState(data, fixed_random(0xA1B2C3D4))
    # no boot_id file yet: the number starts at random (the nonce's low half)
    assert (first.boot_nonce, first.boot_id, first.seq_floor, first.first_seq) == (
        0xA1B2C3D4, 0xC3D4, 0, 0)
    (tmp_path / "seq_floor").write_text("6024")   # left by the RAM-log firmware
    second = BootState(data, fixed_random(0x01020304))   # reboot
    assert (second.boot_nonce, second.boot_id, second.seq_floor) == (0x01020304, 0xC3D5, 6024)
    assert (tmp_path / "seq_floor").read_text() == "6024"   # read only: no seq block per boot
    assert "0x01020304" not in (tmp_path / "boot_id").read_text()   # the nonce is never stored


def test_boot_nonce_is_fresh_every_boot_and_needs_no_file(tmp_path):
    import os
    nonces = set()
    for _ in range(20):
        (tmp_path / "boot_id").unlink(missing_ok=True)         # the file lost every time
        nonces.add(BootState(str(tmp_path), os.urandom).boot_nonce)
    assert len(nonces) == 20


def test_a_lost_or_wrapping_boot_number_moves_off_the_boots_the_log_holds(tmp_path):
    # Boots 0x4000 and 0x4001 left records in the log; then the boot_id file is lost and the
    # random start lands on 0x4000: the number moves on to one the log does not hold, so no
    # frame mixes two boots' ticks and no gap takes another boot's anchor.
    log_dir = str(tmp_path / "log")
    for boot in (0x4000, 0x4001):
        log = FlashLog(log_dir, max_segments=8, boot_id=boot)
        log.append(0, 10, 4300)
        log.flush()
        log.close()
    (tmp_path / "boot_id").write_text("garbage")
    state = BootState(str(tmp_path), fixed_random(0x77774000))
    assert state.boot_id == 0x4000
    log = FlashLog(log_dir, max_segments=8, boot_id=state.boot_id)
    assert log.boots_held() == {0x4000, 0x4001}
    assert state.settle(log.boots_held()) == 0x4002
    assert (tmp_path / "boot_id").read_text() == str(0x4002)   # the next boot counts on
    (tmp_path / "boot_id").write_text(str(0xFFFF))                # and a wrap skips held ones
    assert BootState(str(tmp_path), fixed_random(1)).settle({0, 1}) == 2
    log.close()


def test_patch_log_starts_above_the_legacy_floor_and_never_reuses_a_seq(tmp_path):
    # What app.Patch does at boot: the flash log, floored by the old firmware's seq floor.
    (tmp_path / "seq_floor").write_text("2048")
    boot = BootState(str(tmp_path), fixed_random(1))
    log = FlashLog(str(tmp_path / "log"), max_segments=4,
                   boot_id=boot.boot_id, first_seq=boot.seq_floor)
    assert log.next_seq == 2048
    for i in range(5):
        log.append(0, i, 4300 + i)
    log.flush()   # as a read for a frame does
    # power loss (nothing closed): the next boot starts past every seq handed out
    boot = BootState(str(tmp_path), fixed_random(2))
    log2 = FlashLog(str(tmp_path / "log"), max_segments=4,
                    boot_id=boot.boot_id, first_seq=boot.seq_floor)
    assert 2053 <= log2.next_seq <= 2053 + log2.flush_every
    assert [log2.value(s) for s in range(2048, 2053)] == [4300 + i for i in range(5)]
    assert log2.boot(log2.next_seq - 1) < 0 and log2.next_record(2053) == log2.next_seq
    log.close()
    log2.close()


def test_sampling_config_validates():
    config = SamplingConfig({1: 2})
    assert config.get(1) == 2 and config.get(2) == 5
    assert not config.set(1, 0) and not config.set(99, 5)
    with pytest.raises(ValueError, match="bad sampling config key"):
        SamplingConfig({42: 1})


def test_log_and_boot_state_under_micropython(micropython):
    # What app.Patch does at boot, on the VM's filesystem: BootState, then the flash log
    # floored by the legacy seq floor; appending and reading back allocate nothing.
    out = micropython("""
import gc, micropython, os
from firmware.flash_log import FlashLog
from firmware.persist import BootState
from firmware.board import Board
os.mkdir("/data")
dice = [bytes([5, 0, 0, 0x80]), bytes([9, 0, 0, 0xF0])]
a = BootState("/data", lambda n: dice.pop(0))
with open("/data/seq_floor", "w") as f:
    f.write("6024")
b = BootState("/data", lambda n: dice.pop(0))
print("boots", a.boot_id, b.boot_id, "seq_floor", a.seq_floor, b.seq_floor)
print("nonces", hex(a.boot_nonce), hex(b.boot_nonce))
try:
    Board("x", (0, 0, 0), "/data").random_bytes(4)
except OSError as e:
    print("no urandom:", e)
log = FlashLog("/data/log", boot_id=b.boot_id, first_seq=b.seq_floor)
for i in range(16):
    log.append(i % 4, i, i + 8)
log.value(log.next_seq - 1)
gc.collect()
micropython.heap_lock()
try:
    for i in range(200):
        log.append(i % 4, 16 + i, i)
        log.channel(log.next_seq - 1)
        log.value(log.next_seq - 1)
finally:
    micropython.heap_unlock()
log.ack(6123)
print("appended", log.next_seq, "oldest", log.oldest_seq, "held", len(log),
      "values", [log.value(s) for s in (6124, 6239)])
""")
    assert "boots 5 6 seq_floor 0 6024" in out
    assert "nonces 0x80000005 0xf0000009" in out
    # this VM has no os.urandom: the board says so instead of using a guessable nonce
    assert "no urandom: this MicroPython port has no os.urandom" in out
    assert "appended 6240 oldest 6124 held 116 values [84, 199]" in out


class FakeClock:
    def __init__(self):
        self.tick = 0

    def now(self):
        return self.tick


class FakeTMP117:
    """Always ready; each read is one more sample (and 10 s of ticks)."""

    def __init__(self, clock, values):
        self.clock = clock
        self.values = list(values)

    def start(self):
        pass

    def ready(self):
        return True

    def read_raw(self):
        self.clock.tick += 100
        return self.values.pop(0)


async def test_sampler_slows_down_and_reports_gaps_while_the_log_is_full(tmp_path, monkeypatch):
    from firmware import aio
    from firmware import protocol_ids as ids
    from firmware.sampler import FULL_SLOWDOWN, Sampler

    class Done(Exception):
        pass

    slept = []

    async def sleep_ms(ms):
        slept.append(ms)
        if len(slept) == 12:
            raise Done

    monkeypatch.setattr(aio, "sleep_ms", sleep_ms)
    # segments of 100 B take 4 of these samples each (a 12-byte block per flush): 8 fill the log
    log = FlashLog(str(tmp_path / "log"), segment_bytes=100, max_segments=2, flush_every=1)
    clock = FakeClock()
    seen = []
    sampler = Sampler(log, clock, SamplingConfig(), lambda ch, v: seen.append(v))
    values = [4300 + i for i in range(8)] + [40_000] + [4400 + i for i in range(3)]
    with pytest.raises(Done):
        await sampler.run_channel(ids.CH_TEMPERATURE, FakeTMP117(clock, values))
    # 8 samples fill the log; from then on 60 s periods, 5 samples reported skipped before
    # each one taken; the 9th is out of range (a sensor fault: not logged, not a drop), the
    # next three are refused by the full log
    assert log.next_seq == 8 and log.is_full()
    assert slept[:7] == [10_000] * 7 and slept[7:] == [10_000 * FULL_SLOWDOWN] * 5
    assert sampler.error_flags & ids.ERR_LOG_FULL
    assert sampler.dropped_total == log.dropped_total == 3
    [gap] = log.gaps()
    assert gap.seq_at == 8 and gap.counts[0] == 3 + 4 * (FULL_SLOWDOWN - 1)
    assert 40_000 not in seen and seen[-1] == 4402     # live values go on while full
    # the gateway acknowledges: the next sample is logged after the skipped ones' gap
    log.ack(7)
    sampler._skipped[ids.CH_TEMPERATURE] = FULL_SLOWDOWN - 1   # as run_channel left it
    sampler.record(ids.CH_TEMPERATURE, 4500)
    assert log.next_seq == 9 and not sampler.error_flags & ids.ERR_LOG_FULL
    [gap] = log.gaps()                       # the same gap, now closed: just before seq 8
    assert gap.seq_at == 8 and gap.counts[0] == 3 + 5 * (FULL_SLOWDOWN - 1)
    assert log.value(8) == 4500
    log.close()


async def test_control_write_from_another_central_ends_the_stale_link():
    # The stack never reported the served link gone (seen with a virtual controller under
    # load): a write arriving from another connection must end it, or every later central
    # would get its answers on the dead link and never be served.
    import asyncio
    from types import SimpleNamespace

    from firmware import protocol_ids as ids
    from simulation.device_shims import install

    install()   # aioble: the host shim
    from firmware.ble_link import PatchLink

    class ControlPoint:
        def __init__(self):
            self.writes = asyncio.Queue()
            self.indicated = []

        async def written(self):
            return await self.writes.get()

        async def indicate(self, connection, data):
            self.indicated.append((connection, bytes(data)))

    cp = ControlPoint()
    link = PatchLink(SimpleNamespace(control_point=cp, stream_service_uuid=bytes(16)), "00" * 8,
                     bytes(32),
                     SimpleNamespace(boot_id=1, boot_nonce=5), None, None, None, None)
    served, other = object(), object()
    task = asyncio.ensure_future(link._control_loop(served))
    await cp.writes.put((served, b"\x05" + bytes(12)))      # a request with a bad tag
    await cp.writes.put((other, b"\x05" + bytes(12)))
    await asyncio.wait_for(task, 2)                          # the loop ended by itself
    assert [c for c, _ in cp.indicated] == [served]          # answered on its own link only
    assert cp.indicated[0][1][2] == ids.ST_AUTH_FAILED


def test_replay_flags_backlog_and_resends_historical_and_first_sends_live(tmp_path):
    # protocol.md §4: HISTORICAL marks what a REPLAY sends that was logged before this
    # connection streamed, or was sent on it before; a sample sent for the first time after
    # that is live, even when a later REPLAY (the gateway's idle check) moved the cursor.
    from types import SimpleNamespace

    from firmware import protocol_ids as ids
    from simulation.device_shims import install

    install()   # aioble: the host shim
    from firmware.ble_link import PatchLink

    log = FlashLog(str(tmp_path / "log"), boot_id=1)
    for i in range(10):                       # backlog, logged while nobody was connected
        log.append(0, i, 4300 + i)
    link = PatchLink(SimpleNamespace(stream_service_uuid=bytes(16)), "00" * 8, bytes(32),
                     SimpleNamespace(boot_id=1, boot_nonce=5), log, SimpleNamespace(now=lambda: 100),
                     SamplingConfig(), None)
    assert link._execute(ids.OP_REPLAY, 0)[0] == ids.ST_SUCCESS
    assert (link.cursor, link.replay_end) == (0, 10)          # the backlog: historical
    link.cursor = link._sent_end = 10                          # sent; streaming live now
    for i in range(10, 16):
        log.append(0, i, 4300 + i)
    link.cursor = link._sent_end = 13                          # 10..12 sent live
    link._execute(ids.OP_REPLAY, 11)                           # one frame was lost
    assert (link.cursor, link.replay_end) == (11, 13)          # 11, 12 again: historical
    link._execute(ids.OP_REPLAY, 13)                           # the idle check: nothing lost
    assert (link.cursor, link.replay_end) == (13, 13)          # 13..15 never sent: live
    log.close()


async def test_live_frames_fill_up_once_the_patch_has_seen_its_records_sizes(tmp_path, monkeypatch):
    # protocol.md §4: version-2 records are mostly one byte. Before the patch has sent a
    # frame it assumes 2-byte records (a frame is due at 112 pending samples); from then on
    # it waits for as many samples as fit at the bytes per sample it saw.
    from types import SimpleNamespace

    from simulation.device_shims import install

    install()   # aioble: the host shim
    from firmware import ble_link
    from gateway.protocol.frames import decode_frame

    monkeypatch.setattr(ble_link, "_STREAM_POLL_MS", 0)
    key = bytes(range(32))
    sent = []
    gatt = SimpleNamespace(stream_service_uuid=bytes(16),
                           samples=SimpleNamespace(notify=lambda c, f: sent.append(bytes(f))))
    log = FlashLog(str(tmp_path / "log"), boot_id=1)
    # the clock stands still: no flush interval runs out, only full frames go
    link = ble_link.PatchLink(gatt, "00" * 8, key, SimpleNamespace(boot_id=1, boot_nonce=5),
                              log, SimpleNamespace(now=lambda: 100), SamplingConfig(), None)
    link.cursor = link._sent_end = link.replay_end = 0
    connection = SimpleNamespace(is_connected=lambda: True, mtu=247)
    stream = asyncio.create_task(link._stream_loop(connection))
    for i in range(900):                      # UV every second, unchanged: one byte each
        log.append(1, 100 + 10 * i, 0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    stream.cancel()
    await asyncio.gather(stream, return_exceptions=True)
    log.close()
    counts = [len(decode_frame(f, key)) for f in sent]
    assert counts[0] == 112
    assert len(counts) >= 3 and all(n >= 220 for n in counts[1:]), counts
    assert all(len(f) >= 240 for f in sent[1:]), [len(f) for f in sent]
