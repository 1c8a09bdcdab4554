"""A TCP proxy between an MQTT client and the broker that can hold back PUBACKs.

Client -> broker bytes pass untouched; broker -> client bytes are cut into MQTT packets
(fixed header, Remaining Length) and PUBACKs are kept back while `holding`, so the broker
has the messages and the client never hears so: the window in which a publisher that
deleted rows on publish instead of on PUBACK would lose them in a crash.
"""

from __future__ import annotations

import socket
import threading

from simulation.broker import free_loopback_port

PUBACK = 0x40
CHUNK_BYTES = 65536


def split_packets(buffer: bytearray) -> list[bytes]:
    """Whole MQTT packets at the front of `buffer` (removed from it); a partial one stays."""
    packets = []
    while len(buffer) >= 2:
        length, multiplier, i = 0, 1, 1
        while True:
            if i >= len(buffer):
                return packets
            byte = buffer[i]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            i += 1
            if not byte & 0x80:
                break
        end = i + length
        if len(buffer) < end:
            return packets
        packets.append(bytes(buffer[:end]))
        del buffer[:end]
    return packets


class PubackHoldingProxy:
    def __init__(self, broker_port: int, *, holding: bool = True) -> None:
        self.port = free_loopback_port()
        self.holding = holding
        self.held: list[bytes] = []
        self._broker_port = broker_port
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.05)
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def held_pubacks(self) -> int:
        with self._lock:
            return len(self.held)

    def close(self) -> None:
        self._open = False
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self._broker_port))
            with self._lock:
                self._sockets += [client, broker]
            threading.Thread(target=self._pump_up, args=(client, broker), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(broker, client), daemon=True).start()

    @staticmethod
    def _pump_up(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK_BYTES):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _pump_down(self, source: socket.socket, sink: socket.socket) -> None:
        buffer = bytearray()
        try:
            while data := source.recv(CHUNK_BYTES):
                buffer += data
                for packet in split_packets(buffer):
                    if self.holding and packet[0] & 0xF0 == PUBACK:
                        with self._lock:
                            self.held.append(packet)
                        continue
                    sink.sendall(packet)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
