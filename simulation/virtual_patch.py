"""A virtual patch: the unchanged firmware source on CPython, over Bumble and emulated chips.

The firmware sees `aioble` (the shim in this folder, bound to this patch's own Bumble device
through a context variable), an I2C bus with register-level chip emulators driven by the
skin model, and a data directory standing in for the patch's flash.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import shutil
import time
from pathlib import Path

from simulation.device_shims import install

install()

import aioble  # noqa: E402  (the host shim, found through install())

from firmware import app  # noqa: E402
from firmware.board import Board  # noqa: E402
from firmware.flash_log import segment_records_min  # noqa: E402
from sensor_drivers.emulators.i2c_bus import VirtualI2C  # noqa: E402
from sensor_drivers.environment_model import PatchEnvironment, attach_patch_chips  # noqa: E402

# The model's t = 0 is local midnight; a virtual patch starts its day at 10:00 so the demo
# and tests see daylight UV.
DEFAULT_MODEL_START_S = 10 * 3600


def _backlog_cycle() -> list[tuple[int, int]]:
    """(channel, raw value) of the samples of 5 minutes at the default rates, in time order:
    skin temperature every 10 s (33.6 degC), UV every 5 s, hydration every 60 s, battery
    every 300 s (raw units: protocol.md's channel table)."""
    rates = ((0, 10, 4300), (1, 5, 0), (2, 60, 250_000), (3, 300, 25_600))
    events = sorted((t, channel, value) for channel, period_s, value in rates
                    for t in range(0, 300, period_s))
    return [(channel, value) for _, channel, value in events]


BACKLOG_CYCLE = _backlog_cycle()


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


def write_identity(data_dir: Path, device_id_hex: str, key: bytes) -> None:
    """What `dermtwin provision` writes over USB serial on a real patch."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "identity").write_text(f"device_id={device_id_hex}\nkey={key.hex()}\n")


def log_segments_for(capacity: int) -> int:
    """Flash-log segments that hold at least `capacity` unacknowledged samples, however they
    compress (segment_records_min: worst-case records): whole segments are freed, and the
    newest is partly filled, so one more than the samples need."""
    return -(-capacity // segment_records_min()) + 1


class HostBoard(Board):
    def __init__(self, data_dir: Path, bus: VirtualI2C, config_overrides=None,
                 log_capacity: int = 4096):
        super().__init__("virtual", (0, 0, 0), str(data_dir), log_segments_for(log_capacity),
                         config_overrides)
        self.bus = bus
        self.identify_requests: list[int] = []

    def make_i2c(self):
        return self.bus

    def identify(self, seconds):
        self.identify_requests.append(seconds)


class VirtualPatch:
    def __init__(
        self,
        radio,
        device_id_hex: str,
        key: bytes,
        data_dir: Path,
        *,
        seed: int = 1,
        config_overrides: dict | None = None,
        log_capacity: int = 4096,
        baseline_c: float = 33.5,
        time_scale: float = 1.0,
        model_start_s: float = DEFAULT_MODEL_START_S,
    ):
        self.radio = radio
        self.device_id_hex = device_id_hex
        self.key = key
        self.data_dir = Path(data_dir)
        self.seed = seed
        self.config_overrides = config_overrides
        self.log_capacity = log_capacity
        self.environment = PatchEnvironment(seed=seed, skin_baseline_c=baseline_c)
        self.model_start_s = model_start_s
        # Physiology may run faster than the wall clock (a demo shows an hour in a minute);
        # sample times, ticks and the protocol stay real-time.
        self.time_scale = time_scale
        self.started_s = time.monotonic()
        self.patch: app.Patch | None = None
        self.bumble_device = None
        self.task: asyncio.Task | None = None
        # Seq ranges [first, end) the boots before this one logged durably (power_cut).
        self.earlier_boots: list[tuple[int, int]] = []
        self.torn_bytes = 0   # of the write the power cut before this boot interrupted

    @property
    def name(self) -> str:
        return "DT-" + self.device_id_hex[-4:].upper()

    def model_time_s(self) -> float:
        return self.model_start_s + (time.monotonic() - self.started_s) * self.time_scale

    def skin_celsius(self) -> float:
        return self.environment.skin_temp_c_at(self.model_time_s())

    async def start(self) -> None:
        write_identity(self.data_dir, self.device_id_hex, self.key)
        bus = self.bus = VirtualI2C(clock_ms=monotonic_ms)
        self.chips = attach_patch_chips(bus, self.environment, self.model_time_s)
        board = HostBoard(self.data_dir, bus, self.config_overrides, self.log_capacity)
        self.bumble_device = await self.radio.new_device(self.name)
        context = contextvars.copy_context()
        context.run(aioble.bind_device, self.bumble_device)
        self.patch = context.run(app.Patch, board)
        self.task = asyncio.create_task(self.patch.run(), context=context)

    def _started(self) -> app.Patch:
        if self.patch is None:
            raise RuntimeError(f"virtual patch {self.name} is not started (call start() first)")
        return self.patch

    def preload_backlog(self, count: int) -> None:
        """Samples taken while no gateway was in range (a backlog for the next connection),
        in the default rates' proportions (design.md §1: per 5 minutes 30 skin temperature,
        60 UV, 5 hydration and 1 battery samples), as a real backlog holds them."""
        patch = self._started()
        log = patch.log
        # Ticks only grow within a boot: spread the backlog between this boot's last sample
        # (if any) and now.
        last = log.next_seq - 1
        start = log.tick(last) if log.boot(last) == patch.boot_state.boot_id else 0
        span = patch.clock.now() - start
        for i in range(count):
            channel, value = BACKLOG_CYCLE[i % len(BACKLOG_CYCLE)]
            log.append(channel, start + span * i // count, value + i % 64)

    def stop_sampling(self) -> None:
        self._started().stop_sampling()

    @property
    def samples_taken(self) -> int:
        """Samples logged since this boot (seqs are contiguous within a boot)."""
        if self.patch is None:
            return 0
        return self.patch.log.next_seq - self.patch.boot_state.first_seq

    @property
    def unacked(self) -> int:
        return 0 if self.patch is None else len(self.patch.log)

    async def power_cut(self, rng: random.Random) -> VirtualPatch:
        """Cut the power now, mid-write, and boot again from what the flash holds: the
        returned patch (same identity, a new directory holding the flash image) replaces this
        one, which is dead.

        The image is what reached the files (the log syncs every flush_every appends), plus a
        torn write: a random strict prefix of the bytes the next sync would have written. The
        samples that were only in RAM are gone, as on a board; nobody outside saw them (the
        patch syncs before it reads a record to send)."""
        patch, device = self._started(), self.bumble_device
        if device is None:
            raise RuntimeError(f"virtual patch {self.name} has no radio device")
        log = patch.log
        boot_first, durable, old_next = patch.boot_state.first_seq, log._durable, log.next_seq
        active = log._seg_path(log._first[log._as]) if log._as >= 0 else None
        torn_bytes = 0
        cuts = sum(1 for p in self.data_dir.parent.glob(self.data_dir.name.split(".")[0] + ".*"))
        image = self.data_dir.with_name(f"{self.data_dir.name.split('.')[0]}.boot{cuts + 1}")
        shutil.copytree(self.data_dir, image)
        if active is not None:
            synced = Path(active).stat().st_size
            log.flush()   # into the dead patch's files: what was on its way to flash
            unsynced = Path(active).read_bytes()[synced:]
            torn_bytes = rng.randrange(1, len(unsynced)) if len(unsynced) > 1 else 0
            with open(image / Path(active).relative_to(self.data_dir), "ab") as f:
                f.write(unsynced[:torn_bytes])
        patch.stop_sampling()
        await self.radio.drop_link(str(device.random_address))
        await self.stop()
        if device.is_advertising:
            await device.stop_advertising()
        reborn = VirtualPatch(self.radio, self.device_id_hex, self.key, image, seed=self.seed,
                              config_overrides=self.config_overrides,
                              log_capacity=self.log_capacity, time_scale=self.time_scale,
                              model_start_s=self.model_start_s)
        await reborn.start()
        new_log = reborn._started().log
        end = durable   # a whole block of the torn write may have survived: count it
        while end < old_next and new_log.boot(end) == log.boot_id:
            end += 1
        reborn.earlier_boots = [*self.earlier_boots, (boot_first, end)]
        reborn.torn_bytes = torn_bytes
        return reborn

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if self.patch is not None:
            self.patch.stop_sampling()
            self.patch.log.close()   # flushes and closes its segment files
