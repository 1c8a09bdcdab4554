# Wires the patch together: sensors -> sampler -> log -> BLE link. One task per concern.
import asyncio

from firmware import protocol_ids as ids
from firmware.ble_gatt import GattTable
from firmware.ble_link import PatchLink
from firmware.clock import TickClock
from firmware.persist import BootState
from firmware.sample_log import SampleLog
from firmware.sampler import Sampler
from firmware.sampling_config import SamplingConfig
from sensor_drivers.tmp117 import TMP117


class Patch:
    def __init__(self, board):
        self.board = board
        device_id_hex, key = board.identity()
        self.device_id_hex = device_id_hex
        self.boot_state = BootState(board.data_dir)
        self.log = SampleLog(board.log_capacity, self.boot_state.first_seq)
        self.clock = TickClock()
        self.config = SamplingConfig(board.config_overrides)
        self.gatt = GattTable(device_id_hex, board.name)
        self.link = PatchLink(self.gatt, device_id_hex, key, self.boot_state, self.log,
                              self.clock, self.config, board)
        self.sampler = Sampler(self.log, self.clock, self.config, self.boot_state,
                               self.link.on_sample)
        self.link.sampler = self.sampler
        self.sampling_tasks = []

    async def run(self):
        i2c = self.board.make_i2c()
        link_task = asyncio.create_task(self.link.serve_forever())
        try:
            skin_temperature = TMP117(i2c)
            self.sampling_tasks.append(
                asyncio.create_task(self.sampler.run_skin_temperature(skin_temperature)))
        except OSError as e:
            print("skin temperature sensor unavailable:", e)
            self.sampler.error_flags |= ids.ERR_TEMP_SENSOR
        await link_task

    def stop_sampling(self):
        for task in self.sampling_tasks:
            task.cancel()
        self.sampling_tasks = []


async def run(board):
    await Patch(board).run()
