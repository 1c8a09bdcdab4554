"""Frame decoding throughput: gateway.protocol.frames.decode_frame against a naive
per-sample pure-Python decoder, both measured in this run on the same 7-day backlog.

Prints samples/s for each and the ratio. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.protocol.frames import decode_frame, encode_frame  # noqa: E402

KEY = bytes(range(32))
DAYS = 7
# design.md §1 default schedule: (channel, period s, start value, drift per sample)
SCHEDULE = ((0, 10, 4300, 1), (1, 5, 0, 3), (2, 60, 250_000, -7), (3, 300, 25_600, -1))
FRAME_BYTES = 244


def backlog_samples() -> list[tuple[int, int, int]]:
    events = []
    for channel, period_s, start, drift in SCHEDULE:
        for i in range(DAYS * 86400 // period_s):
            events.append((i * period_s * 10, channel, start + drift * (i % 50)))
    events.sort()
    return [(channel, tick, value) for tick, channel, value in events]


def frames_for(samples) -> list[bytes]:
    frames, seq, i = [], 0, 0
    while i < len(samples):
        n = 90   # about what fits in 244 bytes at these deltas; shrink until it fits
        while True:
            chunk = samples[i:i + n]
            frame = encode_frame(KEY, 1, seq, chunk[0][1], chunk)
            if len(frame) <= FRAME_BYTES:
                break
            n -= 5
        frames.append(frame)
        seq += len(chunk)
        i += len(chunk)
    return frames


def naive_decode(data: bytes, key: bytes) -> list[tuple[int, int, int, int]]:
    """One sample at a time, Python ints only: the baseline."""
    body, tag = data[:-8], data[-8:]
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest()[:8], tag):
        raise ValueError("bad tag")
    first_seq = int.from_bytes(body[4:8], "little")
    tick = int.from_bytes(body[8:12], "little")
    prev = [0, 0, 0, 0]
    out, i = [], 12

    def varint(i):
        u = shift = 0
        while True:
            b = body[i]
            i += 1
            u |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return u, i

    while i < len(body):
        head = body[i]
        i += 1
        dt = head & 0x3F
        if dt == 63:
            dt, i = varint(i)
        zz, i = varint(i)
        channel = head >> 6
        prev[channel] += (zz >> 1) ^ -(zz & 1)
        tick += dt
        out.append((first_seq + len(out), channel, tick, prev[channel]))
    return out


def measure(decode, frames) -> tuple[float, int]:
    start = time.perf_counter()
    count = sum(len(decode(f, KEY)) for f in frames)
    return time.perf_counter() - start, count


def main() -> int:
    samples = backlog_samples()
    frames = frames_for(samples)
    on_air = sum(map(len, frames))
    print(f"backlog: {len(samples)} samples in {len(frames)} frames, "
          f"{on_air / len(samples):.2f} bytes/sample on the air")
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    best = {}
    for name, fn in (("naive per-sample decode", naive_decode), ("decode_frame", decode_frame)):
        runs = [measure(fn, frames) for _ in range(repeats)]
        seconds, count = min(runs)
        assert count == len(samples)
        best[name] = len(samples) / seconds
        print(f"{name:>24}: {best[name]:>12,.0f} samples/s")
    ratio = best["decode_frame"] / best["naive per-sample decode"]
    print(f"ratio decode_frame / naive: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
