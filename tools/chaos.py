"""Chaos run: a fault table against real processes, verified from outside.

For each fault, a fresh world: `dermtwin simulate` (virtual patches behind an HCI-over-TCP
controller), `dermtwin run` (the real gateway process), a private mosquitto, and a verifying
MQTT 5 subscriber (QoS 1, persistent session) on `{subject}/samples`. The fault is injected
after warm-up; then sampling stops (SIGUSR1 to the simulator) and the run waits until every
patch log has drained and the subscriber has what the patches generated. Per fault it prints:
generated (seqs the patches logged), stored (rows in the gateway database, moved-aside damaged
files included), delivered (distinct seqs the subscriber received), lost (generated, never
delivered), dup (a seq delivered again with different values: duplicates left after dedup by
seq: another value or time), redelivered (identical repeats, at-least-once), and the time
to recover (from the end of the fault until a sample newer than any delivered by then reaches
the subscriber). Exit status 1 on any loss, dup or harness error.

    python tools/chaos.py [--short] [--only gateway-kill,clock-step] [--table docs/x.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway import samples_message  # noqa: E402
from gateway.inference import default_models_dir  # noqa: E402
from gateway.model_contracts import SELF_TEST_INPUTS  # noqa: E402
from simulation.broker import LocalBroker  # noqa: E402

GATEWAY_ID = "chaos"
PATCHES = 2
BACKLOG = 300
WARMUP_DELIVERED = 50
DRAIN_TIMEOUT_S = 120.0
# bytes: a drain's samples messages are larger (1.1-1.7 KB in runs here without a limit);
# twins and every other message fit (the table's note shows 0 rows parked)
SIZE_LIMIT = 1000


@dataclass
class World:
    root: Path
    broker: LocalBroker
    env: dict
    skew_file: Path
    models_dir: Path
    db: Path
    sim: subprocess.Popen | None = None
    run: subprocess.Popen | None = None
    hci_port: int = 0
    notes: list[str] = field(default_factory=list)   # what the fault observed, for the table

    def start_gateway(self) -> None:
        self.run = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--db", str(self.db), "--broker",
             self.broker.url, "--hci", f"tcp-client:127.0.0.1:{self.hci_port}", "--gateway-id",
             GATEWAY_ID, "--models-dir", str(self.models_dir)],
            cwd=REPO, env=self.env, stdout=open(self.root / "run.log", "a"),
            stderr=subprocess.STDOUT)

    def kill_gateway(self) -> None:
        if self.run is not None and self.run.poll() is None:
            self.run.send_signal(signal.SIGKILL)
            self.run.wait(10)

    def sim_fault(self, command: dict, timeout_s: float) -> dict:
        """Ask the simulator for a fault (simulation/sim_faults.py) and wait until it has
        run; its counters afterwards."""
        requests = self.root / "sim" / "faults"
        n = len(list(requests.iterdir()))
        pending = requests / f"{n:03d}.part"
        pending.write_text(json.dumps(command))
        pending.rename(pending.with_suffix(".json"))
        _wait(lambda: pending.with_suffix(".taken").exists(), 10, "the simulator to take "
              f"{command['op']}")
        time.sleep(1.0)   # two status rounds: faults.json now counts it as busy
        status = _wait(lambda: (s := self.sim_faults()) and s["busy"] == 0 and s, timeout_s,
                       f"the simulator's {command['op']} to finish")
        if status["errors"]:
            raise RuntimeError(f"simulator fault {command['op']}: {status['errors']}")
        return status

    def sim_faults(self) -> dict:
        try:
            return json.loads((self.root / "sim" / "faults.json").read_text())
        except (OSError, ValueError):
            return {}

    def patches(self) -> dict:
        try:
            return json.loads((self.root / "sim" / "patches.json").read_text())
        except (OSError, ValueError):
            return {}


class Verifier:
    """The subscriber side: every seq received per subject, with its values."""

    def __init__(self, broker: LocalBroker):
        self.lock = threading.Lock()
        self.seen: dict[str, dict[int, tuple]] = {}
        self.redelivered = 0
        self.conflicts = 0
        self.messages = 0
        self.largest = 0   # bytes of the largest samples payload received
        self.last_arrival = time.monotonic()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="chaos-verifier",
                                  protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(
            f"dermtwin/v1/{GATEWAY_ID}/+/samples", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1.0)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        subject = message.topic.split("/")[3]
        payload = json.loads(message.payload)
        with self.lock:
            self.messages += 1
            self.largest = max(self.largest, len(message.payload))
            seen = self.seen.setdefault(subject, {})
            for sample in samples_message.decode(payload):
                # a different time is a restamp: a dup
                value = (sample.prop, sample.raw, sample.utc_ms)
                if sample.seq in seen:
                    if seen[sample.seq] == value:
                        self.redelivered += 1
                    else:
                        self.conflicts += 1
                else:
                    seen[sample.seq] = value
            self.last_arrival = time.monotonic()

    def max_seq(self) -> dict[str, int]:
        with self.lock:
            return {s: max(seqs) for s, seqs in self.seen.items() if seqs}

    def delivered(self) -> int:
        with self.lock:
            return sum(len(s) for s in self.seen.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


# -- model files for the model faults --------------------------------------------------------
def _temp_anomaly_with(extra: Callable[[onnx.GraphProto], None], version: str) -> bytes:
    model = onnx.load(default_models_dir() / "temp_anomaly.onnx")
    for prop in model.metadata_props:
        if prop.key == "version":
            prop.value = version
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["raw_delta_c" if o == "delta_c" else o for o in node.output]
        node.input[:] = ["raw_delta_c" if i == "delta_c" else i for i in node.input]
    extra(graph)
    return model.SerializeToString()


def failing_at_run_time_model() -> bytes:
    """Passes the self-test (its two baselines b1, b2) but answers NaN for any other baseline:
    delta_c + sqrt(-|(b - b1)(b - b2)|): a model bug only live data finds."""
    (b1,), (b2,) = SELF_TEST_INPUTS["baseline_c"]

    def extra(graph):
        h = onnx.helper
        graph.initializer.extend([
            onnx.numpy_helper.from_array(np.array([b1], np.float32), "c33"),
            onnx.numpy_helper.from_array(np.array([b2], np.float32), "c335")])
        graph.node.extend([
            h.make_node("Sub", ["baseline_c", "c33"], ["d1"]),
            h.make_node("Sub", ["baseline_c", "c335"], ["d2"]),
            h.make_node("Mul", ["d1", "d2"], ["k"]),
            h.make_node("Abs", ["k"], ["ak"]),
            h.make_node("Neg", ["ak"], ["nk"]),
            h.make_node("Sqrt", ["nk"], ["poison"]),
            h.make_node("Add", ["raw_delta_c", "poison"], ["delta_c"])])
    return _temp_anomaly_with(extra, "9.0.0-runtime-nan")


def out_of_range_model() -> bytes:
    def extra(graph):
        graph.initializer.append(
            onnx.numpy_helper.from_array(np.array([100.0], np.float32), "scale"))
        graph.node.append(onnx.helper.make_node("Mul", ["raw_delta_c", "scale"], ["delta_c"]))
    return _temp_anomaly_with(extra, "9.0.0-out-of-range")


def _swap_model(world: World, data: bytes, hold_s: float) -> None:
    target = world.models_dir / "temp_anomaly.onnx"
    good = target.read_bytes()
    target.write_bytes(data)
    time.sleep(hold_s)
    target.write_bytes(good)


# -- faults ------------------------------------------------------------------------------
def fault_gateway_kill(world: World, n: int) -> None:
    for _ in range(n):
        world.kill_gateway()
        time.sleep(0.5)
        world.start_gateway()
        time.sleep(2.5)


def fault_broker_kill(world: World, n: int) -> None:
    for _ in range(n):
        world.broker.kill_sync()
        time.sleep(2.0)
        world.broker.start_sync()
        time.sleep(3.0)


def fault_broker_down(world: World, seconds: float) -> None:
    world.broker.stop_sync()
    time.sleep(seconds)
    world.broker.start_sync()


def fault_corrupt_db(world: World) -> None:
    world.kill_gateway()
    conn = sqlite3.connect(world.db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='samples'").fetchone()[0]
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(world.db, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\x5a" * page)
    world.start_gateway()


def fault_clock_step(world: World) -> None:
    world.skew_file.write_text(str(3_600_000))
    time.sleep(6)
    world.skew_file.write_text("0")


def fault_link_drops(world: World, n: int) -> None:
    done = world.sim_fault({"op": "drop_links", "count": n, "min_gap_s": 0.1,
                            "max_gap_s": 0.6}, 60 + 3 * n)
    world.notes.append(f"{done['mid_drain']} mid-drain")


def fault_power_cuts(world: World, n: int) -> None:
    done = world.sim_fault({"op": "power_cut", "count": n, "min_gap_s": 1.0,
                            "max_gap_s": 3.0}, 60 + 5 * n)
    world.notes.append(f"{done['torn_writes']} with a torn write")


def fault_garbled_control(world: World, seconds: float) -> None:
    done = world.sim_fault({"op": "garble", "probability": 0.25, "seconds": seconds},
                           seconds + 30)
    closes = sum("closing session" in line and ("malformed" in line
                                                 or "unauthenticated control point" in line)
                 for line in (world.root / "run.log").read_text().splitlines())
    world.notes.append(f"{done['garbled']} answers garbled ({done['garbled_tagged']} tagged "
                       f"but malformed), {closes} session closes logged")
    if done["garbled"] == 0:
        raise RuntimeError("no Control Point answer was garbled")


def fault_disk_full(world: World, seconds: float) -> None:
    """Fill the gateway's filesystem (a size-limited tmpfs holding only its database) to the
    last byte, hold it full, then free the space."""
    filler = world.db.parent / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:
            while True:   # the last partial chunk's worth
                f.write(b"\0" * 512)
        except OSError:
            pass
    time.sleep(seconds)
    filler.unlink()


@dataclass
class Fault:
    name: str
    inject: Callable[[World], None]
    note: str = ""
    broker_config: tuple[str, ...] = ()   # extra mosquitto.conf lines for this world
    small_disk_mb: int = 0                 # the database on a tmpfs of this size
    expect_alarm: str | None = None        # an alarm kind the retained state must show


def faults(short: bool) -> list[Fault]:
    return [
        Fault("gateway SIGKILL", lambda w: fault_gateway_kill(w, 3 if short else 20),
              "×3" if short else "×20"),
        Fault("broker SIGKILL", lambda w: fault_broker_kill(w, 1 if short else 3),
              "×1" if short else "×3"),
        Fault("broker down", lambda w: fault_broker_down(w, 20 if short else 600),
              "20 s" if short else "10 min"),
        Fault("model fails at run time",
              lambda w: _swap_model(w, failing_at_run_time_model(), 8), "NaN on live data"),
        Fault("bad model swapped in", lambda w: _swap_model(w, out_of_range_model(), 6),
              "outside the card's range"),
        Fault("corrupt database", fault_corrupt_db, "samples root page garbled"),
        Fault("wall clock +1 h, then -1 h", fault_clock_step, "6 s apart"),
        Fault("BLE link drops", lambda w: fault_link_drops(w, 10 if short else 100),
              "×10" if short else "×100"),
        Fault("patch power loss mid-write", lambda w: fault_power_cuts(w, 3 if short else 20),
              "×3" if short else "×20"),
        Fault("disk full, then space returns", lambda w: fault_disk_full(w, 8 if short else 30),
              "8 s" if short else "30 s", small_disk_mb=16, expect_alarm="store"),
        Fault("malformed control responses",
              lambda w: fault_garbled_control(w, 10 if short else 60),
              "25 % for 10 s" if short else "25 % for 60 s"),
        Fault("broker size limit", lambda w: time.sleep(5),
              f"message_size_limit {SIZE_LIMIT} B",
              broker_config=(f"message_size_limit {SIZE_LIMIT}",
                             f"max_packet_size {SIZE_LIMIT + 40}")),
    ]


@dataclass
class Result:
    fault: str
    note: str
    generated: int = 0
    stored: int = 0
    delivered: int = 0
    lost: int = 0
    dup: int = 0
    redelivered: int = 0
    recover_s: float | None = None
    alarms: set = field(default_factory=set)
    error: str | None = None


def _stored(world: World) -> int:
    total = 0
    for path in [world.db, *world.db.parent.glob("gateway.sqlite3.corrupt-*")]:
        if path.name.endswith(("-wal", "-shm")):
            continue
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            total += conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
            conn.close()
        except sqlite3.DatabaseError:
            pass   # the damaged table
    return total


def run_fault(fault: Fault, root: Path) -> Result:
    result = Result(fault.name, fault.note)
    root.mkdir(parents=True)
    models_dir = root / "models"
    shutil.copytree(default_models_dir(), models_dir,
                    ignore=shutil.ignore_patterns("*.py", "cards", "__pycache__"))
    skew = root / "clock-skew"
    skew.write_text("0")
    env = {**os.environ, "PYTHONPATH": str(REPO), "DERMTWIN_CLOCK_SKEW_FILE": str(skew)}
    db_dir = root
    if fault.small_disk_mb:
        db_dir = root / "small-disk"
        db_dir.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={fault.small_disk_mb}m,mode=0700",
                        "tmpfs", str(db_dir)], check=True)
    broker = LocalBroker(data_dir=root / "mosquitto", persistence=True,
                         extra_config=list(fault.broker_config))
    broker.start_sync()
    world = World(root, broker, env, skew, models_dir, db_dir / "gateway.sqlite3")
    verifier = Verifier(broker)
    alarms: set = set()
    state_client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)

    def on_state(client, userdata, message):
        try:
            for alarm in json.loads(message.payload).get("alarms", []):
                alarms.add(alarm["kind"] + (f":{alarm['source']}" if "source" in alarm else ""))
        except ValueError:
            pass

    state_client.on_connect = lambda c, *_: c.subscribe(f"dermtwin/v1/{GATEWAY_ID}/state", 1)
    state_client.on_message = on_state
    state_client.connect_async(broker.host, broker.port)
    state_client.loop_start()
    try:
        world.sim = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "simulate", "--patches", str(PATCHES),
             "--workdir", str(root / "sim"), "--fast", "--backlog", str(BACKLOG),
             "--pair-db", str(world.db)],
            cwd=REPO, env=env, stdout=open(root / "sim.log", "w"), stderr=subprocess.STDOUT)
        hci = _wait(lambda: json.loads((root / "sim" / "hci.json").read_text())
                    if (root / "sim" / "hci.json").exists() else None, 60, "the simulator")
        world.hci_port = hci["port"]
        world.start_gateway()
        _wait(lambda: verifier.delivered() >= WARMUP_DELIVERED, 60, "warm-up deliveries")
        fault.inject(world)
        after = verifier.max_seq()
        ended = time.monotonic()
        _wait(lambda: all(verifier.max_seq().get(s, -1) > seq for s, seq in after.items()),
              120, "new samples delivered after the fault")
        result.recover_s = time.monotonic() - ended
        if world.run is None or world.run.poll() is not None:
            world.start_gateway()
        time.sleep(3)
        world.sim.send_signal(signal.SIGUSR1)   # stop sampling: what was generated is final
        time.sleep(1)

        def drained():
            status = world.patches()
            return status and all(p["unacked"] == 0 and not p["sampling"]
                                  for p in status.values())

        _wait(drained, DRAIN_TIMEOUT_S, "every patch log to drain")
        status = world.patches()
        subjects = {d["device_id"]: d["subject"] for d in
                    json.loads((root / "sim" / "registry.json").read_text())}
        generated = {subjects[d]: set(range(p["first_seq"], p["next_seq"])).union(
                         *(range(first, end) for first, end in p.get("earlier_boots", [])))
                     for d, p in status.items()}
        result.generated = sum(len(s) for s in generated.values())

        def all_delivered():
            with verifier.lock:
                return all(seqs <= verifier.seen.get(s, {}).keys()
                           for s, seqs in generated.items())

        try:
            _wait(all_delivered, 60, "the subscriber to have every sample")
        except TimeoutError:
            pass
        time.sleep(1)
        with verifier.lock:
            result.delivered = sum(len(generated[s] & v.keys())
                                   for s, v in verifier.seen.items() if s in generated)
            result.dup = verifier.conflicts
            result.redelivered = verifier.redelivered
            if fault.broker_config:
                connects = (root / "run.log").read_text().count("mqtt connected")
                conn = sqlite3.connect(f"file:{world.db}?mode=ro", uri=True)
                parked = conn.execute("SELECT COUNT(*) FROM outbox_parked").fetchone()[0]
                conn.close()
                world.notes.append(f"{verifier.messages} samples messages, largest "
                                   f"{verifier.largest} B; {connects} broker connect(s), "
                                   f"{parked} rows parked")
        result.lost = result.generated - result.delivered
        result.stored = _stored(world)
        if fault.expect_alarm and not any(a.split(":")[0] == fault.expect_alarm
                                          for a in alarms):
            raise RuntimeError(f"the {fault.expect_alarm} alarm never showed on state")
    except Exception as e:   # a harness failure is a result too: reported, counts as a failure
        result.error = f"{type(e).__name__}: {e}"
    finally:
        result.alarms = set(alarms)
        verifier.close()
        state_client.disconnect()
        state_client.loop_stop()
        for process in (world.run, world.sim):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        broker.stop_sync()
        if fault.small_disk_mb:
            shutil.copytree(db_dir, root / "small-disk.kept", ignore=lambda *_: ["filler"])
            subprocess.run(["umount", str(db_dir)], check=False)
        if world.notes:
            result.note = "; ".join([result.note, *world.notes] if result.note else world.notes)
    return result


def table(results: list[Result]) -> str:
    lines = ["| fault | generated | stored | delivered | lost | dup after dedup | "
             "redelivered | recover (s) | alarms seen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        recover = "—" if r.recover_s is None else f"{r.recover_s:.1f}"
        name = r.fault + (f" ({r.note})" if r.note else "")
        if r.error:
            name += f" — HARNESS ERROR: {r.error}"
        lines.append(f"| {name} | {r.generated} | {r.stored} | {r.delivered} | {r.lost} | "
                     f"{r.dup} | {r.redelivered} | {recover} | "
                     f"{', '.join(sorted(r.alarms)) or '—'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="shortened faults (CI)")
    parser.add_argument("--only", help="comma-separated fault names (substring match)")
    parser.add_argument("--keep", type=Path, help="keep every world's files here")
    args = parser.parse_args(argv)
    selected = faults(args.short)
    if args.only:
        wanted = [w.strip().lower() for w in args.only.split(",")]
        selected = [f for f in selected if any(w in f.name.lower() for w in wanted)]
    base = args.keep or Path(tempfile.mkdtemp(prefix="dermtwin-chaos-"))
    results = []
    for i, fault in enumerate(selected):
        started = time.monotonic()
        result = run_fault(fault, base / f"{i:02d}")
        results.append(result)
        print(f"{fault.name}: lost {result.lost}, dup {result.dup}"
              + (f", error {result.error}" if result.error else "")
              + f" ({time.monotonic() - started:.0f} s)", flush=True)
    print(table(results))
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    failed = [r for r in results if r.lost or r.dup or r.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
