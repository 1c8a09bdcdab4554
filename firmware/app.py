# Wires the patch together: sensors -> sampler -> log -> BLE link, and the battery policy.
# One task per concern.
import asyncio

from firmware import protocol_ids as ids
from firmware.ble_gatt import GattTable
from firmware.ble_link import PatchLink
from firmware.clock import TickClock
from firmware.flash_log import FlashLog
from firmware.persist import BootState
from firmware.power import PowerManager
from firmware.sampler import CHANNELS, Sampler
from firmware.sampling_config import SamplingConfig
from firmware.watchdog import TaskWatchdog
from sensor_drivers.fdc1004 import FDC1004
from sensor_drivers.ltr390 import LTR390
from sensor_drivers.max17048 import MAX17048
from sensor_drivers.tmp117 import TMP117

# channel -> driver class; each chip is set up on its own so one missing chip only costs its
# channel (the error flag says which).
DRIVERS = (
    (ids.CH_TEMPERATURE, TMP117),
    (ids.CH_UV, LTR390),
    (ids.CH_HYDRATION, FDC1004),
    (ids.CH_BATTERY, MAX17048),
)


class Patch:
    def __init__(self, board):
        self.board = board
        device_id_hex, key = board.identity()
        self.device_id_hex = device_id_hex
        self.boot_state = BootState(board.data_dir, board.random_bytes)
        # The power-loss-safe log of every sample not yet acknowledged (flash_log.py).
        self.log = FlashLog(board.log_dir, max_segments=board.log_max_segments(),
                            boot_id=self.boot_state.boot_id,
                            first_seq=self.boot_state.seq_floor)
        # Nothing is logged yet: this boot's number may still move off the ones the log holds.
        self.log.boot_id = self.boot_state.settle(self.log.boots_held())
        self.boot_state.first_seq = self.log.next_seq
        self.clock = TickClock()
        self.config = SamplingConfig(board.config_overrides, board.data_dir + "/config.json")
        self.gatt = GattTable(device_id_hex, board.name)
        self.link = PatchLink(self.gatt, device_id_hex, key, self.boot_state, self.log,
                              self.clock, self.config, board)
        self.sampler = Sampler(self.log, self.clock, self.config, self.link.on_sample)
        self.link.sampler = self.sampler
        # Battery policy (power.py): flags, flush and sensor pause as the cell runs down.
        self.power = PowerManager(self.link)
        self.sampling_tasks = []
        self.watchdog = TaskWatchdog(board.make_watchdog)

    async def run(self):
        i2c = self.board.make_i2c()
        link_task = asyncio.create_task(self.link.serve_forever())
        self.watchdog.watch(link_task)
        for channel, driver in DRIVERS:
            try:
                sensor = driver(i2c)
            except OSError as e:
                print("sensor unavailable:", e)
                self.sampler.error_flags |= CHANNELS[channel][1]
                continue
            task = asyncio.create_task(self.sampler.run_channel(channel, sensor))
            self.sampling_tasks.append(task)
            self.watchdog.watch(task)
        power_task = asyncio.create_task(self.power.run())
        self.watchdog.watch(power_task)
        watchdog_task = asyncio.create_task(self.watchdog.run())
        try:
            await link_task
        finally:
            watchdog_task.cancel()
            power_task.cancel()

    def stop_sampling(self):
        for task in self.sampling_tasks:
            self.watchdog.tasks.remove(task)
            task.cancel()
        self.sampling_tasks = []


async def run(board):
    await Patch(board).run()
