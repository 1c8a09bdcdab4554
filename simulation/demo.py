"""`dermtwin demo`: virtual patches → gateway → MQTT broker → live view, in one process.

With no broker given it starts a private mosquitto on a free loopback port, as a Pi gateway
runs a local mosquitto bridged to the clinic's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path

from gateway import store as store_mod
from gateway.ble.radio import BleRadio
from gateway.broker_config import CREDENTIALS_DIR, Deployment
from gateway.inference import default_models_dir
from gateway.live_view import run_live_view
from gateway.mqtt.config import MqttConfig
from gateway.service import Gateway, GatewayConfig
from gateway.values import RegisteredDevice
from simulation.broker import LocalBroker

log = logging.getLogger(__name__)

# Lively defaults so a short demo shows the twins move (the firmware defaults are 10 s / 60 s).
# Lively: temperature every 1 s, UV every 2 s, hydration every 5 s, battery every 10 s,
# frames flushed every 2 s (the firmware defaults are 10 s / 5 s / 60 s / 300 s).
DEMO_PATCH_CONFIG = {1: 1, 2: 2, 4: 5, 5: 10, 6: 2}
DEMO_GATEWAY_ID = "demo"
DEMO_CLINIC = "clinic"     # the private broker's accounts besides the gateway (broker_config roles)
DEMO_VIEWER = "viewer"
DEMO_TIME_SCALE = 120          # skin physiology runs 2 minutes per wall-clock second
DEMO_INFLAMMATION = (2.6, 900.0, 600.0)   # patch 0: +2.6 °C 15 model-minutes in, 10 min rise


def demo_identity(index: int, secret: bytes) -> tuple[str, bytes, str]:
    """Device id, key and pseudonymous subject id for virtual patch `index`."""
    device_id = hashlib.sha256(b"dermtwin-demo-device-%d" % index).hexdigest()[:16]
    key = hmac.new(secret, b"key:" + device_id.encode(), hashlib.sha256).digest()
    subject = "s-" + hmac.new(secret, b"subject:" + device_id.encode(),
                              hashlib.sha256).hexdigest()[:10]
    return device_id, key, subject


def pair_virtual_patches(db_path: Path, identities: list[tuple[str, bytes, str]],
                         keys: dict[int, bytes] | None = None) -> None:
    """Register virtual patches in a gateway database, as `dermtwin pair` would. `keys`
    overrides the registered key of some patches (to test a patch the gateway cannot
    authenticate)."""
    registry = store_mod.Store(store_mod.connect(db_path))
    with registry.transaction():
        for i, (device_id, key, subject) in enumerate(identities):
            registry.register(
                RegisteredDevice(device_id, (keys or {}).get(i, key), subject, 3, None),
                int(time.time() * 1000))
    registry.conn.close()


async def run_demo(patches: int, duration_s: float, broker_url: str | None = None,
                   summary_path: Path | None = None, workdir: Path | None = None,
                   live: bool = True, gateway_id: str = DEMO_GATEWAY_ID,
                   wide: bool | None = None,
                   homeassistant_prefix: str | None = None) -> dict:
    from simulation.virtual_patch import VirtualPatch
    from simulation.virtual_radio import VirtualRadio

    if patches < 1:
        raise ValueError("--patches must be at least 1")
    if duration_s <= 0:
        raise ValueError("--duration must be positive")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dermtwin-demo-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    broker = None
    if broker_url is None:
        # Not anonymous: one account per role, as `dermtwin broker-config` writes them.
        broker = LocalBroker.for_deployment(
            Deployment.of([gateway_id], [DEMO_CLINIC], [DEMO_VIEWER]),
            data_dir=workdir / "mosquitto")
        await broker.start()
        broker_url = broker.url
        print(f"started a private mosquitto at {broker_url} (no anonymous access; accounts "
              f"{gateway_id} (gateway), {DEMO_CLINIC}, {DEMO_VIEWER} (read-only); passwords in "
              f"{broker.data_dir / CREDENTIALS_DIR}/)")
        mqtt = MqttConfig.from_url(broker_url, gateway_id=gateway_id, username=gateway_id,
                                   password_file=broker.credentials[gateway_id])
    else:
        mqtt = MqttConfig.from_url(broker_url, gateway_id=gateway_id)

    secret = os.urandom(32)
    db_path = workdir / "gateway.sqlite3"
    identities = [demo_identity(i, secret) for i in range(patches)]
    pair_virtual_patches(db_path, identities)

    radio = VirtualRadio(seed=1)
    virtual_patches = [
        VirtualPatch(radio, device_id, key, workdir / f"patch-{i}", seed=i + 1,
                     config_overrides=DEMO_PATCH_CONFIG, baseline_c=33.2 + 0.3 * i,
                     time_scale=DEMO_TIME_SCALE)
        for i, (device_id, key, _) in enumerate(identities)]
    offset_c, start_s, rise_s = DEMO_INFLAMMATION
    first = virtual_patches[0]
    first.environment.set_inflammation(offset_c, start_s=first.model_start_s + start_s,
                                       rise_s=rise_s)
    for patch in virtual_patches:
        await patch.start()

    gateway = Gateway(GatewayConfig(db_path, mqtt, default_models_dir(),
                                    homeassistant_prefix=homeassistant_prefix),
                      BleRadio(await radio.new_adapter()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(duration_s, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    started = time.monotonic()

    def progress() -> str:
        return f"{time.monotonic() - started:.0f}/{duration_s:.0f} s"

    view = asyncio.create_task(run_live_view(gateway, progress, wide=wide)) if live else None
    try:
        await gateway.run(stop)
    finally:
        if view is not None:
            view.cancel()
            await asyncio.gather(view, return_exceptions=True)
        for patch in virtual_patches:
            await patch.stop()
    summary = gateway.summary()
    summary.update({
        "broker": mqtt.url,
        "topic_root": mqtt.topic_root,
        "duration_s": duration_s,
        "patches": patches,
        "samples_generated": sum(p.samples_taken for p in virtual_patches),
        "samples_unacked_at_patches": sum(p.unacked for p in virtual_patches),
        "subjects": {subject: device_id for device_id, _, subject in identities},
    })
    gateway.close()
    await radio.close()
    if broker is not None:
        await broker.stop()
    if summary_path is not None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return summary
