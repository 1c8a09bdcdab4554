"""What `dermtwin sink`'s durability rests on, checked against the real mosquitto (docs/sink.md):
a member of an MQTT 5 shared subscription that is SIGKILLed with QoS 1 messages in flight
(received, not acknowledged) gets them again, flagged DUP, when it reconnects with the same
client id to its persistent session; while it is away the broker keeps sending its share of
the group to that session (up to `max_queued_messages`, its unacknowledged messages
included; the rest is dropped); without a
session (expiry 0) its in-flight messages are lost, not passed to another member."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

import paho.mqtt.client as paho

from simulation.broker import LocalBroker

# A group member as its own process: acknowledges (or not) and prints what it gets.
MEMBER = r"""
import sys, paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
port, cid, expiry, ack = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "ack"
c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv5,
                manual_ack=True)
def on_connect(c, u, flags, rc, p):
    print("connected", int(flags.session_present), flush=True)
    c.subscribe("$share/g/t/#", qos=1)
def on_subscribe(*a):
    print("subscribed", flush=True)
def on_message(c, u, m):
    print("got", m.payload.decode(), int(m.dup), flush=True)
    if ack:
        c.ack(m.mid, m.qos)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
p = Properties(PacketTypes.CONNECT)
p.SessionExpiryInterval = expiry
c.connect("127.0.0.1", port, clean_start=expiry == 0, properties=p)
c.loop_forever()
"""


class Member:
    def __init__(self, broker: LocalBroker, client_id: str, expiry_s: int, ack: bool):
        self.process = subprocess.Popen(
            [sys.executable, "-c", MEMBER, str(broker.port), client_id, str(expiry_s),
             "ack" if ack else "hold"], stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._taken = 0   # lines[:_taken] were looked at by got()
        self._output: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._read_until("subscribed")

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._output.put(line.strip())

    def _read_until(self, word: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._output.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"member never printed {word!r}: {self.lines}") from None
            self.lines.append(line)
            if line.startswith(word):
                return

    def got(self, n: int) -> list[tuple[int, bool]]:
        """The next n messages it prints: (payload, dup)."""
        out: list[tuple[int, bool]] = []
        while len(out) < n:
            if self._taken == len(self.lines):
                self._read_until("got")
            line = self.lines[self._taken]
            self._taken += 1
            if line.startswith("got"):
                _, payload, dup = line.split()
                out.append((int(payload), dup == "1"))
        return out

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def publish(broker: LocalBroker, values: range) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="publisher",
                         protocol=paho.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    for v in values:
        client.publish("t/x", str(v), qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_a_killed_member_gets_its_in_flight_and_queued_share_back_on_its_session():
    with LocalBroker(extra_config=["max_queued_messages 5"]) as broker:
        holder = Member(broker, "holder", 300, ack=False)   # receives, never acknowledges
        other = Member(broker, "other", 300, ack=True)
        publish(broker, range(0, 6))                           # alternate: 3 each
        in_flight = holder.got(3)
        assert [dup for _, dup in in_flight] == [False] * 3
        other.got(3)
        holder.kill()                                          # SIGKILL: no DISCONNECT
        publish(broker, range(6, 26))                          # 10 each; holder's queue keeps 5
        other_share = other.got(10)
        time.sleep(0.3)
        restarted = Member(broker, "holder", 300, ack=True)
        assert restarted.lines[0] == "connected 1"            # the session was resumed
        again = restarted.got(5)
        # first the in-flight ones, flagged DUP, then the share queued while it was away
        assert again[:3] == [(v, True) for v, _ in in_flight]
        assert all(not dup for _, dup in again[3:])
        queued = {v for v, _ in again[3:]}
        assert not queued & {v for v, _ in other_share}       # the share was not re-routed
        # max_queued_messages counts the unacknowledged in-flight ones too: 3 + 2 of its 10
        assert len(queued) == 2
        publish(broker, range(26, 28))                         # and nothing else was kept:
        assert restarted.got(1)[0][0] in (26, 27)              # next comes a new message
        for member in (restarted, other):
            member.kill()
        assert "Outgoing messages are being dropped for client holder" in broker.log_tail(50)


def test_without_a_session_a_killed_members_in_flight_messages_are_lost():
    with LocalBroker() as broker:
        holder = Member(broker, "holder", 0, ack=False)
        other = Member(broker, "other", 0, ack=True)
        publish(broker, range(0, 6))
        lost = {v for v, _ in holder.got(3)}
        seen = {v for v, _ in other.got(3)}
        holder.kill()
        publish(broker, range(6, 10))                          # all to the member left
        seen |= {v for v, _ in other.got(4)}
        time.sleep(0.5)
        restarted = Member(broker, "holder", 0, ack=True)
        assert restarted.lines[0] == "connected 0"
        publish(broker, range(10, 12))
        # the next message either member gets is a new one: the lost ones never come again
        new = {v for v, _ in restarted.got(1)} | {v for v, _ in other.got(1)}
        for member in (restarted, other):
            member.kill()
        assert new == {10, 11}
        assert len(lost) == 3 and not lost & seen
