"""The non-BLE firmware on the board under test: TMP117 -> FlashLog -> FrameEncoder, with
the key provisioned over serial; the gateway decodes the frames the board built. The flash log
lives on the board's filesystem (under the scratch directory), so a log reopened without being
closed (a power loss) is read back from what reached the board's flash.

Files go onto the board over the raw REPL as .py sources: firmware/ without host/ and the
BLE modules (ble_*.py, app.py, main.py need aioble), and sensor_drivers/ with its
emulators. The virtual board has no chips, so the sampling tests run a TMP117 emulator on a
VirtualI2C; on a real board (DERMTWIN_BOARD set) the real TMP117 on the board's I2C is read
instead.
"""

from __future__ import annotations

import pytest
from board_fixture import REPO_DIR, SCRATCH_DIR, board_under_test, connected_repl

from gateway.protocol import control as cp
from gateway.protocol.constants import Channel, ConfigKey, Status
from gateway.protocol.frames import FrameError, FrameErrorCode, decode_frame
from gateway.provision import provision

NON_BLE_EXCLUDED = ("app.py", "main.py")
DATA_DIR = f"{SCRATCH_DIR}/data"
LOG_DIR = f"{DATA_DIR}/log"
BOOT_ID = 0x1234
FIRST_SEQ = 5000
LSB_PER_CELSIUS = 128  # TMP117: 7.8125 m°C per LSB
# Exact multiples of 1/128 °C, so the expected raw values are exact.
TEMPERATURES_C = (33.25, 33.5, 34.0078125, 36.75, 21.0, -3.5)
TICK_PERIOD = 100  # ticks (100 ms) between samples: the 10 s default


def device_files() -> list[tuple[str, str]]:
    files = []
    for path in sorted((REPO_DIR / "firmware").glob("*.py")):
        if path.name.startswith("ble_") or path.name in NON_BLE_EXCLUDED:
            continue
        files.append((str(path), f"/lib/firmware/{path.name}"))
    for path in sorted((REPO_DIR / "sensor_drivers").rglob("*.py")):
        if "__pycache__" not in path.parts:
            files.append((str(path), f"/lib/{path.relative_to(REPO_DIR).as_posix()}"))
    return files


@pytest.fixture(scope="module")
def firmware_board():
    """One board for the module, with the non-BLE firmware and a provisioned identity."""
    with board_under_test() as target, connected_repl(target.port) as repl:
        for local, board_path in device_files():
            repl.put_file(local, board_path)
        identity = provision(repl, data_dir=DATA_DIR)
        repl.soft_reset()  # import the fresh files
        yield target, repl, identity
        for _, board_path in device_files():
            repl.remove(board_path)


def test_the_firmware_modules_import_on_the_board(firmware_board):
    _, repl, _ = firmware_board
    names = [path.rsplit("/", 1)[1] for _, path in device_files()
             if path.startswith("/lib/firmware/")]
    assert set(names) <= set(repl.listdir("/lib/firmware"))
    modules = ["firmware." + name[:-3] for name in names if name != "__init__.py"]
    modules += ["sensor_drivers.tmp117", "sensor_drivers.emulators.tmp117",
                "sensor_drivers.emulators.i2c_bus"]
    for module in modules:
        repl.exec(f"import {module}")


SAMPLE_WITH_EMULATOR = f"""
import binascii
from sensor_drivers.emulators.i2c_bus import ManualClock, VirtualI2C
from sensor_drivers.emulators.tmp117 import TMP117Emulator
from sensor_drivers.tmp117 import TMP117
from firmware import protocol_ids as ids
from firmware.board import Board
from firmware.flash_log import FlashLog
from firmware.frame_encoder import FrameEncoder

device_id, key = Board('test', (0, 0, 0), {DATA_DIR!r}).identity()
skin = {{'c': 0.0}}
clock = ManualClock(1000)
bus = VirtualI2C(clock)
bus.attach(TMP117Emulator(lambda: skin['c']))
sensor = TMP117(bus)

def fresh_log():
    # each test starts from an empty log on the board's filesystem
    import os
    try:
        for name in os.listdir({LOG_DIR!r}):
            os.remove({LOG_DIR!r} + '/' + name)
    except OSError:
        pass
    return FlashLog({LOG_DIR!r}, boot_id={BOOT_ID}, first_seq={FIRST_SEQ})

log = fresh_log()

def sample(celsius, tick):
    skin['c'] = celsius
    clock.advance(sensor.start_oneshot())
    if not sensor.ready():
        raise RuntimeError('conversion not ready')
    return log.append(ids.CH_TEMPERATURE, tick, sensor.read_raw())

def frames(max_bytes):
    # as the streamer does: records read back from the log (reading flushes them first), up
    # to the first hole
    enc = FrameEncoder(key, max_bytes)
    seq = log.oldest_seq
    enc.start(log.boot(seq), seq, log.tick(seq))
    while seq < log.next_seq and log.boot(seq) >= 0:
        if not enc.add(log.channel(seq), log.tick(seq), log.value(seq)):
            print(binascii.hexlify(enc.finish()).decode())
            enc.start(log.boot(seq), seq, log.tick(seq))
            continue
        seq += 1
    print(binascii.hexlify(enc.finish()).decode())
"""


@pytest.mark.virtual_only
def test_tmp117_samples_become_a_frame_the_gateway_decodes(firmware_board):
    _, repl, identity = firmware_board
    repl.exec(SAMPLE_WITH_EMULATOR)
    seqs = [repl.eval(f"sample({c!r}, {i * TICK_PERIOD})") for i, c in enumerate(TEMPERATURES_C)]
    assert seqs == list(range(FIRST_SEQ, FIRST_SEQ + len(TEMPERATURES_C)))
    (frame_hex,) = repl.exec("frames(244)").split()

    frame = decode_frame(bytes.fromhex(frame_hex), identity.key)
    assert (frame.version, frame.boot_id, frame.first_seq, frame.base_tick) == \
        (2, BOOT_ID, FIRST_SEQ, 0)
    assert not frame.historical
    assert frame.samples() == [
        (FIRST_SEQ + i, Channel.TEMPERATURE, i * TICK_PERIOD, round(c * LSB_PER_CELSIUS))
        for i, c in enumerate(TEMPERATURES_C)
    ]
    assert [v / LSB_PER_CELSIUS for v in frame.value] == list(TEMPERATURES_C)


@pytest.mark.virtual_only
def test_frames_split_at_the_size_limit_and_carry_every_sample(firmware_board):
    _, repl, identity = firmware_board
    repl.exec(SAMPLE_WITH_EMULATOR)
    expected = []
    for i in range(40):
        celsius = 30 + (i * 37 % 50) / 8  # jumps of up to ~6 °C: multi-byte varints
        seq = repl.eval(f"sample({celsius!r}, {i * TICK_PERIOD + i % 3})")
        expected.append((seq, Channel.TEMPERATURE, i * TICK_PERIOD + i % 3,
                         round(celsius * LSB_PER_CELSIUS)))
    frames = [bytes.fromhex(h) for h in repl.exec("frames(64)").split()]
    assert len(frames) > 1 and all(len(f) <= 64 for f in frames)
    decoded = [sample for f in frames for sample in decode_frame(f, identity.key).samples()]
    assert decoded == expected


@pytest.mark.virtual_only
def test_the_log_on_the_board_survives_a_power_loss_and_acks(firmware_board):
    _, repl, identity = firmware_board
    repl.exec(SAMPLE_WITH_EMULATOR)
    for i, c in enumerate(TEMPERATURES_C):
        repl.eval(f"sample({c!r}, {i * TICK_PERIOD})")
    (frame_hex,) = repl.exec("frames(244)").split()      # read for sending: now on flash
    repl.eval(f"sample(30.0, {len(TEMPERATURES_C) * TICK_PERIOD})")   # still in RAM only
    # power loss: the log is reopened without close(), as the next boot does
    repl.exec(f"log = FlashLog({LOG_DIR!r}, boot_id={BOOT_ID + 1})")
    n = len(TEMPERATURES_C)
    assert repl.eval("(log.oldest_seq, log.next_seq, len(log))") == (
        FIRST_SEQ, FIRST_SEQ + n + 16, n)                  # extent + flush_every: no reuse
    assert repl.eval(f"log.boot({FIRST_SEQ + n})") == -1   # the unflushed sample is gone
    assert repl.exec("frames(244)").split() == [frame_hex]  # the same frame, from flash
    decoded = decode_frame(bytes.fromhex(frame_hex), identity.key)
    assert decoded.boot_id == BOOT_ID and len(decoded) == n
    # the gateway acknowledges: the log empties, and the ack survives the next reopening
    repl.exec(f"log.ack({FIRST_SEQ + n - 1})")
    assert repl.eval("(log.oldest_seq, len(log))") == (FIRST_SEQ + n + 16, 0)
    repl.exec(f"log = FlashLog({LOG_DIR!r}, boot_id={BOOT_ID + 2})")
    assert repl.eval("(log.oldest_seq, len(log), log.next_seq)") == (
        FIRST_SEQ + n + 16, 0, FIRST_SEQ + n + 16)         # nothing to re-send, no seq reused


@pytest.mark.virtual_only
def test_a_frame_under_another_key_is_rejected(firmware_board):
    _, repl, identity = firmware_board
    repl.exec(SAMPLE_WITH_EMULATOR)
    repl.exec("sample(33.0, 0)")
    frame = bytes.fromhex(repl.exec("frames(244)").strip())
    wrong_key = bytes(b ^ 0x01 for b in identity.key)
    with pytest.raises(FrameError) as caught:
        decode_frame(frame, wrong_key)
    assert caught.value.code == FrameErrorCode.BAD_TAG
    tampered = bytearray(frame)
    tampered[-9] ^= 0x01  # last record byte
    with pytest.raises(FrameError):
        decode_frame(bytes(tampered), identity.key)
    assert decode_frame(frame, identity.key).samples()[0][3] == 33 * LSB_PER_CELSIUS


def test_control_requests_run_once_and_answers_are_bound_on_the_board(firmware_board):
    """The Control Point's guard on the board, with the key provisioned over serial: the
    board's boot nonce comes from its own random source, a gateway request runs once (written
    again it is STALE_REQUEST), and the gateway accepts the board's answers only for the
    request each one answers."""
    target, repl, identity = firmware_board
    repl.exec(f"""
import binascii
from firmware import control_codec as cc
from firmware.board import Board
from firmware.persist import random_u32
board = Board('test', (0, 0, 0), {DATA_DIR!r})
device_id, key = board.identity()
try:
    nonce = random_u32(board.random_bytes)
except OSError as e:       # the virtual board's VM has no os.urandom; a board has
    print('no urandom')
    nonce = 0x9E3779B9
guard = cc.ControlGuard(key, nonce)
buf = bytearray(64)
def write(hex_request):
    request = binascii.unhexlify(hex_request)
    op, st, operand = guard.parse(request)
    return binascii.hexlify(guard.respond(buf, request, op, st)).decode(), operand
""")
    nonce = repl.eval("nonce")
    if target.virtual:
        assert nonce == 0x9E3779B9
    request = cp.set_config(identity.key, nonce, 0, ConfigKey.UV_PERIOD_S, 7)
    answer_hex, operand = repl.eval(f"write({request.hex()!r})")
    answer = bytes.fromhex(answer_hex)
    assert cp.decode_response(answer, identity.key, nonce, request).status is Status.SUCCESS
    assert tuple(operand) == (ConfigKey.UV_PERIOD_S, 7)
    again_hex, operand = repl.eval(f"write({request.hex()!r})")      # replayed
    assert operand is None
    assert cp.decode_response(bytes.fromhex(again_hex), identity.key, nonce,
                              request).status is Status.STALE_REQUEST
    later = cp.get_status(identity.key, nonce, 1)
    with pytest.raises(cp.ResponseTagError):      # the first answer does not answer this one
        cp.decode_response(answer, identity.key, nonce, later)
    assert repl.eval("guard.next_counter") == 1


def test_real_tmp117_on_the_board(firmware_board):
    target, repl, identity = firmware_board
    if target.virtual:
        pytest.skip("needs a board with a TMP117 (DERMTWIN_BOARD=/dev/ttyACM0)")
    frame_hex = repl.exec(
        "import binascii, time\n"
        "from firmware import board as b\n"
        "from firmware.frame_encoder import FrameEncoder\n"
        "from sensor_drivers.tmp117 import TMP117\n"
        "bd = b.detect()\n"
        "sensor = TMP117(bd.make_i2c())\n"
        f"key = b.Board('t', (0, 0, 0), {DATA_DIR!r}).identity()[1]\n"
        "enc = FrameEncoder(key)\n"
        "enc.start(1, 0, 0)\n"
        "for i in range(3):\n"
        "    time.sleep_ms(sensor.start_oneshot() + 5)\n"
        "    if not sensor.ready():\n"
        "        raise RuntimeError('TMP117 conversion not ready')\n"
        "    enc.add(0, i * 10, sensor.read_raw())\n"
        "print(binascii.hexlify(enc.finish()).decode())\n", timeout_s=20)
    frame = decode_frame(bytes.fromhex(frame_hex.strip()), identity.key)
    assert len(frame) == 3
    assert all(10 <= v / LSB_PER_CELSIUS <= 45 for v in frame.value)  # a room or a wrist
