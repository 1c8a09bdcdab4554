"""Sample frames: decoding throughput and bytes on the air.

- codec.decode_rate: gateway.protocol.frames.decode_frame against a naive per-sample
  pure-Python decoder of the same (version-2) frames, on the same 7-day backlog.
- codec.air_bytes_per_sample: that backlog in frames of at most 244 bytes, against
  fixed-width records; codec.air_bytes_per_sample_vs_v1: against version-1 frames of the
  same samples (protocol.md §4.2); codec.air_bytes_per_sample_modelled_day: a modelled
  workday (bench/modelled_day.py: the skin model through the real drivers and chip
  emulators, UV at 1 s outdoors) in version 2 against version 1.

Not a test: the rates depend on the machine.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import figure, interleaved, print_table  # noqa: E402
from modelled_day import workday  # noqa: E402

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


def frames_for(samples, version: int = 2) -> list[bytes]:
    frames, seq, i = [], 0, 0
    while i < len(samples):
        # As many samples as fit, as the firmware's encoder packs them: shrink from more
        # than can fit (records are at least 1 byte, 2 in version 1) until the frame fits.
        n = (FRAME_BYTES - 20) // (1 if version == 2 else 2)
        while True:
            chunk = samples[i:i + n]
            frame = encode_frame(KEY, 1, seq, chunk[0][1], chunk, version=version)
            if len(frame) <= FRAME_BYTES:
                break
            n -= max(1, (len(frame) - FRAME_BYTES) // (4 if version == 2 else 2))
        frames.append(frame)
        seq += len(chunk)
        i += len(chunk)
    return frames


def live_frames(samples, version: int = 2, flush_ticks: int = 600) -> list[bytes]:
    """Frames as the patch sends them while streaming live (firmware/ble_link.py): a frame
    goes out once its oldest sample has waited the flush interval (60 s by default), or
    earlier when it is full."""
    frames, i = [], 0
    while i < len(samples):
        due = samples[i][1] + flush_ticks
        j = i
        while j < len(samples) and samples[j][1] <= due:
            j += 1
        for frame in frames_for(samples[i:j], version):
            frames.append(frame)
        i = j
    return frames


def naive_decode(data: bytes, key: bytes) -> list[tuple[int, int, int, int]]:
    """Version-2 records one sample at a time, Python ints only: the baseline."""
    body, tag = data[:-8], data[-8:]
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest()[:8], tag):
        raise ValueError("bad tag")
    first_seq = int.from_bytes(body[4:8], "little")
    tick = int.from_bytes(body[8:12], "little")
    prev = [0, 0, 0, 0]
    last = [tick] * 4
    step = [0, 0, 0, 0]
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
        channel, code = head >> 6, head & 0x3F
        if code < 48:
            adjust, zz = (0, code) if code < 32 else (1, code - 32) if code < 40 else (-1, code - 40)
            tick = last[channel] + step[channel] + adjust
        else:
            dt = code - 48
            if code == 63:
                dt, i = varint(i)
            zz, i = varint(i)
            tick += dt
        prev[channel] += (zz >> 1) ^ -(zz & 1)
        step[channel] = tick - last[channel]
        last[channel] = tick
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

    v1_frames = frames_for(samples, version=1)

    def rate(decode, frames):
        def run() -> float:
            # CPU time of this process: decoding is single-threaded and CPU-bound, and the
            # machine is shared (wall time would count other processes' turns)
            start = time.process_time()
            for f in frames:
                decode(f, KEY)
            return len(samples) / (time.process_time() - start)
        return run

    rates = interleaved(repeats, naive=rate(naive_decode, frames),
                        decode_frame=rate(decode_frame, frames),
                        decode_frame_v1=rate(decode_frame, v1_frames))
    v1_on_air = sum(map(len, v1_frames))
    day = workday()
    day_v2 = sum(map(len, frames_for(day))) / len(day)
    day_v1 = sum(map(len, frames_for(day, version=1))) / len(day)
    live_v2 = sum(map(len, live_frames(day))) / len(day)
    live_v1 = sum(map(len, live_frames(day, version=1))) / len(day)
    return {
        "codec.decode_rate": figure(
            rates["decode_frame"], rates["naive"], "samples/s",
            f"decode_frame over a {DAYS}-day backlog ({len(samples)} samples) against a naive "
            "per-sample pure-Python decoder of the same version-2 frames; CPU time, "
            "interleaved rounds, medians"),
        "codec.decode_rate_vs_v1": figure(
            rates["decode_frame"], rates["decode_frame_v1"], "samples/s",
            f"decode_frame over the {DAYS}-day backlog in version-2 frames against the same "
            "samples in version-1 frames (protocol.md §4.2); CPU time, interleaved rounds, "
            "medians"),
        "codec.air_bytes_per_sample": figure(
            on_air / len(samples), naive_frames_bytes(samples) / len(samples), "B/sample",
            f"frames of at most {FRAME_BYTES} B at the default rates, against fixed-width "
            "9-byte records behind the same header and tag", better="lower"),
        "codec.air_bytes_per_sample_vs_v1": figure(
            on_air / len(samples), v1_on_air / len(samples), "B/sample",
            f"the same {DAYS}-day backlog in frames of at most {FRAME_BYTES} B: version-2 "
            "records against version 1's (protocol.md §4.2)", better="lower"),
        "codec.air_bytes_per_sample_modelled_day": figure(
            day_v2, day_v1, "B/sample",
            f"a modelled workday ({len(day)} samples: bench/modelled_day.py, the skin model "
            "through the patch's drivers and chip emulators at the default rates, UV at 1 s "
            f"outdoors) in frames of at most {FRAME_BYTES} B, version 2 against version 1",
            better="lower"),
        "codec.air_bytes_per_sample_live": figure(
            live_v2, live_v1, "B/sample",
            "the same workday streamed live: a frame goes out when its oldest sample has "
            "waited the 60 s flush interval (or when full), version 2 against version 1",
            better="lower"),
    }


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
