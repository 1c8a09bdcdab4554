"""The walking skeleton end to end on real parts: virtual patches (the firmware source over
Bumble, TMP117 emulators) → gateway (bleak API, session, SQLite, ONNX) → a real mosquitto,
checked by an independent `mosquitto_sub`."""

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from gateway import samples_message
from simulation.broker import LocalBroker

REPO = Path(__file__).resolve().parents[1]


def mosquitto_sub(broker: LocalBroker, out_path: Path) -> subprocess.Popen:
    binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    return subprocess.Popen(
        [binary, "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5",
         "--retain-as-published", "-t", "dermtwin/v1/#", "-F", "%r\t%t\t%p"],
        stdout=open(out_path, "w"), stderr=subprocess.STDOUT)


def read_messages(path: Path) -> list[tuple[bool, str, dict]]:
    messages = []
    for line in path.read_text().splitlines():
        retained, topic, payload = line.split("\t", 2)
        messages.append((retained == "1", topic, json.loads(payload)))
    return messages


@pytest.mark.slow
def test_demo_cli_publishes_state_twins_and_consecutive_deltas(tmp_path):
    broker = LocalBroker()
    broker.start_sync()
    sub_out = tmp_path / "sub.txt"
    sub = mosquitto_sub(broker, sub_out)
    try:
        time.sleep(0.5)
        summary = tmp_path / "summary.json"
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "demo", "--patches", "2", "--duration", "20",
             "--broker", broker.url, "--summary", str(summary), "--no-live"],
            cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        time.sleep(0.5)
    finally:
        sub.send_signal(signal.SIGINT)
        sub.wait(5)
        broker.stop_sync()
    messages = read_messages(sub_out)
    root = "dermtwin/v1/demo"
    states = [(r, p) for r, t, p in messages if t == f"{root}/state"]
    assert any(r and p["online"] is True for r, p in states), states
    assert states[-1][1]["online"] is False, "a clean stop publishes online: false"

    report = json.loads(summary.read_text())
    subjects = set(report["subjects"])
    assert len(subjects) == 2
    twins = defaultdict(list)
    deltas = defaultdict(list)
    for retained, topic, payload in messages:
        parts = topic.split("/")
        if len(parts) == 5 and parts[4] == "twin":
            assert retained
            twins[parts[3]].append(payload)
        if len(parts) == 5 and parts[4] == "delta":
            deltas[parts[3]].append(payload["rev"])
    assert set(twins) == subjects and set(deltas) == subjects
    for subject, revs in deltas.items():
        assert len(revs) >= 5, (subject, revs)
        assert revs == list(range(revs[0], revs[0] + len(revs))), (subject, revs)
        assert report["last_rev"][subject] == revs[-1]
    assert report["samples_stored"] > 0
    assert report["samples_generated"] >= report["samples_stored"]
    # raw samples: every stored sample published once, on its subject's samples topic
    raw_seqs = defaultdict(list)
    for _, topic, payload in messages:
        parts = topic.split("/")
        if len(parts) == 5 and parts[4] == "samples":
            assert parts[3] in subjects
            raw_seqs[parts[3]] += [s.seq for s in samples_message.decode(payload)]
    assert sum(len(seqs) for seqs in raw_seqs.values()) == report["samples_stored"]
    assert all(len(seqs) == len(set(seqs)) for seqs in raw_seqs.values()), {
        subject: sorted(s for s in seqs if seqs.count(s) > 1) for subject, seqs in raw_seqs.items()}
    for topic in {t for _, t, _ in messages}:
        assert all(level in subjects or level in ("dermtwin", "v1", "demo", "state", "twin",
                                                  "delta", "meta", "alert", "samples")
                   for level in topic.split("/")), topic


async def test_malformed_frame_is_counted_and_dropped_and_session_continues(tmp_path):
    from gateway_harness import GatewayRig, wait_for

    from gateway.session import State

    async with GatewayRig(tmp_path, patches=1, seed=3) as rig:
        gateway = await rig.start_gateway()
        await wait_for(lambda: gateway.store.sample_count() >= 3, what="streaming")
        link = rig.link(0)
        session = link.session
        assert session.state is State.STREAMING
        firmware = rig.patches[0].patch
        # A patch with a firmware bug (or a corrupted notification) sends garbage, a frame of
        # the wrong version and a truncated one, through its own aioble characteristic.
        for garbage in (b"\x01\x00garbage-bytes-here-xx", b"\x02" + b"\x00" * 30, b"\x01"):
            firmware.gatt.samples.notify(firmware.link.connection, garbage)
        await wait_for(lambda: link.frames_rejected_total >= 3, what="the rejections")
        stored = gateway.store.sample_count()
        await wait_for(lambda: gateway.store.sample_count() >= stored + 2, what="more samples")
        assert link.session is session and session.state is State.STREAMING
        assert sum(session.stats.frames_rejected.values()) == 3
