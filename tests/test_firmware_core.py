"""Firmware core modules (sample log, boot state, sampling config) on CPython and on the
real MicroPython VM."""

import pytest

from firmware.persist import SEQ_BLOCK, BootState
from firmware.sample_log import LOG_FULL, SampleLog
from firmware.sampling_config import SamplingConfig


def test_log_appends_reads_and_acks_in_seq_order():
    log = SampleLog(8, first_seq=100)
    seqs = [log.append(i % 4, 10 * i, -5 + i) for i in range(6)]
    assert seqs == list(range(100, 106))
    assert (log.channel(103), log.tick(103), log.value(103)) == (3, 30, -2)
    log.ack(102)
    assert log.oldest_seq == 103 and len(log) == 3
    log.ack(50)                       # old ACK: no effect
    assert log.oldest_seq == 103
    log.ack(10_000)                   # beyond what exists: acknowledges only what exists
    assert log.oldest_seq == log.next_seq == 106


def test_full_log_refuses_instead_of_overwriting():
    log = SampleLog(4)
    for i in range(4):
        assert log.append(0, i, i) == i
    assert log.is_full() and log.append(0, 9, 9) == LOG_FULL
    assert [log.value(s) for s in range(4)] == [0, 1, 2, 3]
    log.ack(0)
    assert log.append(0, 9, 9) == 4 and log.value(4) == 9


def test_boot_state_never_reuses_a_seq_across_reboots(tmp_path):
    data = str(tmp_path)
    first = BootState(data)
    assert first.boot_id == 0 and first.first_seq == 0
    first.reserve(SEQ_BLOCK + 5)       # crossed into a second block
    second = BootState(data)            # power loss, reboot
    assert second.boot_id == 1
    assert second.first_seq > SEQ_BLOCK + 5


def test_sampling_config_validates():
    config = SamplingConfig({1: 2})
    assert config.get(1) == 2 and config.get(2) == 5
    assert not config.set(1, 0) and not config.set(99, 5)
    with pytest.raises(ValueError, match="bad sampling config key"):
        SamplingConfig({42: 1})


def test_log_and_boot_state_under_micropython(micropython):
    out = micropython("""
import gc, micropython, os
from firmware.sample_log import SampleLog
from firmware.persist import BootState
log = SampleLog(256, first_seq=10)
for i in range(16):
    log.append(i % 4, i, i - 8)
gc.collect()
micropython.heap_lock()
try:
    for i in range(200):
        log.append(i % 4, i, -i)
        log.channel(log.next_seq - 1)
        log.value(log.next_seq - 1)
    log.ack(100)
finally:
    micropython.heap_unlock()
print("appended", log.next_seq, "oldest", log.oldest_seq)
os.mkdir("/data")
a = BootState("/data")
a.reserve(5000)
b = BootState("/data")
print("boots", a.boot_id, b.boot_id, "first_seq", b.first_seq)
""")
    assert "appended 226 oldest 101" in out
    assert "boots 0 1 first_seq 6024" in out
