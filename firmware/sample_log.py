# Samples not yet acknowledged by the gateway, oldest first, addressed by seq.
# Walking-skeleton version: a preallocated RAM ring. The power-loss-safe flash log (issue 4)
# keeps this interface. Appending and reading allocate nothing.
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
