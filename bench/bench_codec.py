"""Frame decoding throughput: gateway.protocol.frames.decode_frame against a naive
per-sample pure-Python decoder, both measured in this run on the same 7-day backlog.

Prints samples/s for each and the ratio. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import figure, interleaved, print_table, timed  # noqa: E402

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
        # As many samples as fit, as the firmware's encoder packs them: shrink from more
        # than can fit (records are at least 2 bytes) until the frame fits.
        n = (FRAME_BYTES - 20) // 2
        while True:
            chunk = samples[i:i + n]
            frame = encode_frame(KEY, 1, seq, chunk[0][1], chunk)
            if len(frame) <= FRAME_BYTES:
                break
            n -= max(1, (len(frame) - FRAME_BYTES) // 2)
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


def naive_frames_bytes(samples) -> int:
    """The same samples in fixed-width records (tick u32, channel u8, value i32) behind the
    same 12-byte header and 8-byte tag, in frames of the same size: the air baseline."""
    per_frame = (FRAME_BYTES - 12 - 8) // 9
    frames = -(-len(samples) // per_frame)
    return frames * (12 + 8) + len(samples) * 9


def figures() -> dict[str, dict]:
    samples = backlog_samples()
    frames = frames_for(samples)
    on_air = sum(map(len, frames))
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))

    def rate(decode):
        def run() -> float:
            seconds = timed(lambda: [decode(f, KEY) for f in frames])
            return len(samples) / seconds
        return run

    rates = interleaved(repeats, naive=rate(naive_decode), decode_frame=rate(decode_frame))
    return {
        "codec.decode_rate": figure(
            rates["decode_frame"], rates["naive"], "samples/s",
            f"decode_frame over a {DAYS}-day backlog ({len(samples)} samples) against a naive "
            "per-sample pure-Python decoder; interleaved rounds, medians"),
        "codec.air_bytes_per_sample": figure(
            on_air / len(samples), naive_frames_bytes(samples) / len(samples), "B/sample",
            f"frames of at most {FRAME_BYTES} B at the default rates, against fixed-width "
            "9-byte records behind the same header and tag", better="lower"),
    }


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
