# RETIRED: the walking-skeleton RAM log, replaced by flash_log.FlashLog (which kept this
# interface). Nothing in the firmware or the tests uses it any more; it stays only because
# hil_tests/test_provision.py imports it on the board as one of its BOARD_MODULES. Delete it
# together with that entry.
#
# Samples not yet acknowledged by the gateway, oldest first, addressed by seq: a preallocated
# RAM ring. Appending and reading allocate nothing.
from array import array

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x

LOG_FULL = const(-1)


class SampleLog:
    def __init__(self, capacity, first_seq=0):
        self.capacity = capacity
        self._channel = bytearray(capacity)
        self._tick = array("I", bytes(4 * capacity))
        self._value = array("i", bytes(4 * capacity))
        self.oldest_seq = first_seq
        self.next_seq = first_seq

    def __len__(self):
        return self.next_seq - self.oldest_seq

    def is_full(self):
        return self.next_seq - self.oldest_seq >= self.capacity

    def append(self, channel, tick, value):
        if self.next_seq - self.oldest_seq >= self.capacity:
            return LOG_FULL
        seq = self.next_seq
        slot = seq % self.capacity
        self._channel[slot] = channel
        self._tick[slot] = tick
        self._value[slot] = value
        self.next_seq = seq + 1
        return seq

    def channel(self, seq):
        return self._channel[seq % self.capacity]

    def tick(self, seq):
        return self._tick[seq % self.capacity]

    def value(self, seq):
        return self._value[seq % self.capacity]

    def ack(self, seq):
        # Everything up to and including seq is durable at the gateway.
        if seq >= self.next_seq:
            seq = self.next_seq - 1
        if seq >= self.oldest_seq:
            self.oldest_seq = seq + 1
