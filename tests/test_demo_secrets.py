"""A short `dermtwin demo` run leaks no device key and no broker password: everything it
prints and logs (at debug level), everything on its broker (`#`, captured by the clinic
account, which reads every topic the gateway may write) and every process's arguments are
searched for them. Its private broker refuses anonymous clients."""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_S = 8
STARTED = re.compile(r"started a private mosquitto at mqtt://127\.0\.0\.1:(\d+)")


def process_table() -> str:
    return subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True,
                          text=True, check=True).stdout


def needles(secret: bytes | str) -> list[bytes]:
    if isinstance(secret, str):
        return [secret.encode()]
    return [secret, secret.hex().encode(), secret.hex().upper().encode(),
            base64.b64encode(secret), base64.b64encode(secret).rstrip(b"=")]


@pytest.mark.slow
def test_a_demo_run_leaks_no_device_key_and_no_broker_password(tmp_path):
    workdir = tmp_path / "demo"
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        demo = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "-vv", "demo", "--patches", "2",
             "--duration", str(DEMO_S), "--no-live", "--workdir", str(workdir),
             "--summary", str(tmp_path / "summary.json")],
            cwd=REPO, stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    captured: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    tables: list[str] = []
    client = None
    try:
        deadline = time.monotonic() + 60
        while not (match := STARTED.search(out_path.read_text())):
            assert demo.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, "the demo did not start its broker"
            time.sleep(0.05)
        port = int(match.group(1))
        assert "no anonymous access" in out_path.read_text()

        anonymous = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        refusal = {}
        anonymous.on_connect = lambda c, u, f, rc, p: refusal.setdefault("rc", rc)
        anonymous.connect("127.0.0.1", port)
        while "rc" not in refusal and time.monotonic() < deadline:
            anonymous.loop(timeout=0.1)
        anonymous.disconnect()
        assert str(refusal.get("rc")) == "Not authorized"

        password = (workdir / "mosquitto" / "credentials" / "clinic.password").read_text()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.username_pw_set("clinic", password.strip())

        def on_message(c, u, message) -> None:
            with lock:
                captured.append((message.topic, bytes(message.payload)))

        client.on_message = on_message
        client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        client.connect("127.0.0.1", port)
        client.loop_start()
        while demo.poll() is None:
            tables.append(process_table())
            time.sleep(1.0)
        assert demo.returncode == 0, err_path.read_text()
    finally:
        if demo.poll() is None:
            demo.terminate()
            demo.wait(30)
        if client is not None:
            client.disconnect()
            client.loop_stop()

    conn = sqlite3.connect(workdir / "gateway.sqlite3")
    keys = [bytes(row[0]) for row in conn.execute("SELECT key FROM devices")]
    conn.close()
    assert len(keys) == 2 and all(len(k) == 32 for k in keys)
    passwords = [p.read_text().strip()
                 for p in (workdir / "mosquitto" / "credentials").glob("*.password")]
    assert len(passwords) == 3

    with lock:
        mqtt = b"\n".join(topic.encode() + b" " + payload for topic, payload in captured)
    assert b"/twin " in mqtt and b"/samples " in mqtt, "the capture saw the demo's traffic"
    output = out_path.read_bytes() + err_path.read_bytes()
    assert b"DEBUG" in output, "debug logging was on"
    haystacks = {
        "stdout and stderr (logs)": output,
        "mosquitto log": (workdir / "mosquitto" / "mosquitto.log").read_bytes(),
        "MQTT capture of #": mqtt,
        "process arguments": "\n".join(tables).encode(),
        "summary": (tmp_path / "summary.json").read_bytes(),
    }
    assert len(tables) >= DEMO_S // 2
    for where, haystack in haystacks.items():
        for key in keys:
            for needle in needles(key):
                assert needle not in haystack, f"a device key in the {where}"
        for password in passwords:
            assert password.encode() not in haystack, f"a broker password in the {where}"
    assert json.loads(haystacks["summary"])["samples_stored"] > 0
