"""Stopping the gateway ends even when a task loses its cancel (as asyncio.wait_for does on
Python 3.11 when the cancel meets the end of the wait, and libraries below the links use it):
Gateway.run cancels again until every task has ended."""

import asyncio
import time

from gateway_harness import GatewayRig, wait_for

from gateway.ble.radio import BleRadio
from gateway.inference import default_models_dir
from gateway.mqtt.config import MqttConfig
from gateway.service import Gateway, GatewayConfig


async def test_stop_ends_although_a_task_swallows_its_first_cancel(tmp_path):
    async with GatewayRig(tmp_path, patches=1) as rig:
        lost = []

        async def stubborn_ingest():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                lost.append("first cancel")   # lost, as inside wait_for
            await asyncio.sleep(3600)

        gateway = Gateway(GatewayConfig(rig.db_path, MqttConfig.from_url(
            rig.broker.url, gateway_id="rig"), default_models_dir()),
            BleRadio(await rig.radio.new_adapter()))
        gateway.ingest.run = stubborn_ingest
        stop = asyncio.Event()
        run = asyncio.create_task(gateway.run(stop))
        try:
            await wait_for(lambda: gateway.publisher.connected, what="the gateway running")
            started = time.monotonic()
            stop.set()
            await asyncio.wait_for(run, 10)
        finally:
            gateway.close()
        assert lost == ["first cancel"]
        assert time.monotonic() - started < 5
