"""`dermtwin simulate`: virtual patches on a software radio, offered to a gateway in another
process over an HCI-over-TCP controller, as a USB/UART dongle would be.

The gateway runs `dermtwin run --hci tcp-client:127.0.0.1:PORT`, so it can be stopped,
killed and restarted while the patches live on. The simulator writes `registry.json` (what a
technician's provisioning produced: device ids, keys, subjects) and refreshes `patches.json`
(each patch's log state) in its work directory. SIGUSR1 stops sampling (the patches keep
their logs and keep serving); SIGINT/SIGTERM exit. Faults (link drops, power cuts, garbled
Control Point answers) are injected on request: simulation/sim_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from gateway.private_files import private_dir, write_private
from simulation.demo import demo_identity, pair_virtual_patches

STATUS_INTERVAL_S = 0.25


def _write_json(path: Path, payload: object) -> None:
    write_private(path, json.dumps(payload, indent=1, sort_keys=True))   # registry.json: keys


def patch_status(patches) -> dict:
    return {p.device_id_hex: {"name": p.name, "first_seq": p.patch.boot_state.first_seq,
                              "oldest_seq": p.patch.log.oldest_seq,
                              "next_seq": p.patch.log.next_seq, "unacked": p.unacked,
                              "connected": bool(p.bumble_device.connections),
                              "sampling": bool(p.patch.sampling_tasks),
                              "earlier_boots": [list(b) for b in p.earlier_boots]}
            for p in patches}


async def run_simulator(patches: int, workdir: Path, *, hci_port: int = 0,
                        patch_config: dict | None = None, backlog: int = 0,
                        pair_db: Path | None = None, seed: int = 1) -> None:
    from simulation.sim_faults import FaultInjector
    from simulation.virtual_patch import VirtualPatch
    from simulation.virtual_radio import VirtualRadio

    private_dir(workdir)
    radio = VirtualRadio(seed=seed)
    secret = os.urandom(32)
    identities = [demo_identity(i, secret) for i in range(patches)]
    _write_json(workdir / "registry.json", [
        {"device_id": d, "key": k.hex(), "subject": s} for d, k, s in identities])
    if pair_db is not None:
        pair_virtual_patches(pair_db, identities)
    virtual = [VirtualPatch(radio, d, k, workdir / f"patch-{i}", seed=i + 1,
                            config_overrides=patch_config, log_capacity=max(20_000, 2 * backlog))
               for i, (d, k, _) in enumerate(identities)]
    for patch in virtual:
        await patch.start()
        if backlog:
            patch.preload_backlog(backlog)
    port = await radio.serve_hci_tcp(hci_port)
    print(f"simulating {patches} patches; gateway: dermtwin run --hci tcp-client:127.0.0.1:{port}",
          flush=True)
    faults = FaultInjector(radio, virtual, workdir, seed=seed)
    _write_json(workdir / "hci.json", {"port": port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def stop_sampling_all() -> None:
        for p in virtual:
            p.stop_sampling()

    loop.add_signal_handler(signal.SIGUSR1, stop_sampling_all)
    try:
        while not stop.is_set():
            faults.poll()
            _write_json(workdir / "patches.json", patch_status(virtual))
            try:
                await asyncio.wait_for(stop.wait(), STATUS_INTERVAL_S)
            except TimeoutError:
                pass
    finally:
        _write_json(workdir / "patches.json", patch_status(virtual))
        for patch in virtual:
            await patch.stop()
        await radio.close()
