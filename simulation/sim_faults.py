"""Faults a running `dermtwin simulate` injects on request (tools/chaos.py).

A request is a JSON file dropped into `<workdir>/faults/` (the simulator picks it up within
0.25 s, renames it `*.taken`); progress is in `<workdir>/faults.json`:

    {"op": "drop_links", "count": 100, "min_gap_s": 0.1, "max_gap_s": 0.6}
        drop a random connected patch's link, `count` times (only real drops count); before
        about half of them, the patch first gets a few hundred samples of backlog (it was out
        of range), so most drops come mid-drain.
    {"op": "power_cut", "count": 20, "min_gap_s": 1.0, "max_gap_s": 3.0}
        cut a random patch's power mid-write and boot it again from its flash image
        (VirtualPatch.power_cut); the patch's earlier boots' seqs go to patches.json.
    {"op": "garble", "probability": 0.1, "seconds": 30}
        for that long, each Control Point answer is garbled with that probability: half of
        them correctly tagged but with a truncated payload (malformed), half cut short (the
        tag no longer checks).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import MutableSequence
from pathlib import Path
from typing import Any

from gateway.private_files import write_private


class FaultInjector:
    def __init__(self, radio: Any, patches: MutableSequence[Any], workdir: Path, seed: int = 1):
        self.radio = radio
        self.patches = patches   # the simulator's list: a power cut replaces its entry
        self.dir = workdir / "faults"
        self.dir.mkdir(exist_ok=True)
        self.status_path = workdir / "faults.json"
        self.rng = random.Random(seed)
        self.counts = {"drops": 0, "mid_drain": 0, "power_cuts": 0, "torn_writes": 0,
                       "garbled": 0, "garbled_tagged": 0}
        self.busy: set[asyncio.Task] = set()
        self.errors: list[str] = []
        self._garble_until = 0.0
        self._garble_p = 0.0

    def poll(self) -> None:
        for request in sorted(self.dir.glob("*.json")):
            taken = request.with_suffix(".taken")
            request.rename(taken)
            try:
                command = json.loads(taken.read_text())
                task = asyncio.create_task(self._run(command))
            except (ValueError, KeyError) as e:
                self.errors.append(f"{request.name}: {e}")
                continue
            self.busy.add(task)
            task.add_done_callback(self._done)
        for patch in self.patches:
            self._install_garbler(patch)
        write_private(self.status_path, json.dumps(
            {**self.counts, "busy": len(self.busy), "errors": self.errors}))

    def _done(self, task: asyncio.Task) -> None:
        self.busy.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(repr(task.exception()))

    async def _run(self, command: dict) -> None:
        op = command["op"]
        if op == "drop_links":
            await self._drop_links(int(command["count"]), command.get("min_gap_s", 0.1),
                                   command.get("max_gap_s", 0.6))
        elif op == "power_cut":
            await self._power_cuts(int(command["count"]), command.get("min_gap_s", 1.0),
                                   command.get("max_gap_s", 3.0))
        elif op == "garble":
            self._garble_p = float(command["probability"])
            self._garble_until = asyncio.get_running_loop().time() + float(command["seconds"])
            await asyncio.sleep(float(command["seconds"]))
        else:
            raise KeyError(f"unknown op {op!r}")

    def _connected(self) -> list[int]:
        return [i for i, p in enumerate(self.patches)
                if p.bumble_device is not None and p.bumble_device.connections]

    async def _drop_links(self, count: int, min_gap_s: float, max_gap_s: float) -> None:
        while self.counts["drops"] < count:
            await asyncio.sleep(self.rng.uniform(min_gap_s, max_gap_s))
            connected = self._connected()
            if not connected:
                continue
            patch = self.patches[self.rng.choice(connected)]
            if self.rng.random() < 0.5:
                patch.preload_backlog(self.rng.randrange(100, 400))   # back in range
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))      # its drain begins
            if patch.unacked > 20:
                self.counts["mid_drain"] += 1
            self.counts["drops"] += await self.radio.drop_link(
                str(patch.bumble_device.random_address))

    async def _power_cuts(self, count: int, min_gap_s: float, max_gap_s: float) -> None:
        for _ in range(count):
            await asyncio.sleep(self.rng.uniform(min_gap_s, max_gap_s))
            i = self.rng.randrange(len(self.patches))
            self.patches[i] = reborn = await self.patches[i].power_cut(self.rng)
            self.counts["power_cuts"] += 1
            self.counts["torn_writes"] += reborn.torn_bytes > 0

    def _install_garbler(self, patch: Any) -> None:
        """Wrap this boot's Control Point answers (once per boot: the guard is per boot)."""
        if patch.patch is None:
            return
        guard = patch.patch.link.guard
        if getattr(guard, "garbler_installed", False):
            return
        respond = guard.respond

        def garbled_respond(buf, request, opcode, status, payload=None):
            loop = asyncio.get_running_loop()
            if loop.time() >= self._garble_until or self.rng.random() >= self._garble_p:
                return respond(buf, request, opcode, status, payload)
            self.counts["garbled"] += 1
            if payload is not None and len(payload) > 1 and self.rng.random() < 0.5:
                self.counts["garbled_tagged"] += 1
                short = bytes(payload)[:self.rng.randrange(1, len(payload))]
                return respond(buf, request, opcode, status, short)
            answer = bytes(respond(buf, request, opcode, status, payload))
            return answer[:self.rng.randrange(1, len(answer))]

        guard.respond = garbled_respond
        guard.garbler_installed = True
