# The patch's side of the BLE link: advertise, answer the control point, stream frames.
# One central at a time. Nothing here raises out of a task on bad input: a malformed
# control-point write gets a status code.
import struct

import aioble
from micropython import const

from firmware import aio, control_codec
from firmware import protocol_ids as ids
from firmware.frame_encoder import FrameEncoder
from sensor_drivers.tmp117 import raw_to_centi_celsius

# Module constants are private const()s where they can be: folded by mpy-cross, they cost
# no global and no interned name on the patch (docs/firmware.md, Memory).
_ADV_INTERVAL_US = const(250_000)
# Advertising restarts this often with fresh manufacturer data (battery, backlog, flags):
# aioble cannot change a running advertisement.
ADV_REFRESH_MS = 30_000
_BATTERY_NOT_KNOWN = const(255)   # status and advertisement before the first gauge sample
_ENOMEM = const(12)
_STREAM_POLL_MS = const(100)
_FRAME_OVERHEAD = const(20)  # header + tag (protocol.md §4)
_ESTIMATE_MIN_SAMPLES = const(16)  # a frame this full tells how many samples fill one
_LINK_WATCH_MS = const(250)
NO_GAP_AHEAD = 0x100000000   # above every seq
# Status record offsets (protocol.md §6) of the fields refreshed on every sample.
_STATUS_NEXT_SEQ_AT = const(10)   # next_seq u32, tick u32, error flags u16
_STATUS_BATTERY_AT = const(30)
# Advertising data (protocol.md §2): AD types (Core Supplement Part A §1) and lengths.
_AD_FLAGS = const(0x01)
_AD_COMPLETE_NAME = const(0x09)
_AD_MANUFACTURER = const(0xFF)
_FLAGS_LE_GENERAL_NO_BREDR = const(0x06)
_ADV_LEN = const(23)   # flags 3 + name "DT-XXXX" 9 + manufacturer data 11


class PatchLink:
    def __init__(self, gatt, device_id_hex, key, boot_state, log, clock, config, board):
        self.gatt = gatt
        self.device_id_hex = device_id_hex
        self.name = control_codec.device_name(device_id_hex)
        self.key = key
        self.boot_state = boot_state
        self.log = log
        self.clock = clock
        self.config = config
        self.board = board
        self.sampler = None
        # Unprovisioned (no key): no frames; every request is answered NOT_PROVISIONED, so the
        # stream never starts.
        self.encoder = FrameEncoder(key, ids.FRAME_MAX_BYTES) if key else None
        # Request authentication for this boot: lives as long as the boot, not a connection,
        # so a request captured on one link is refused on the next (protocol.md §5).
        self.guard = control_codec.ControlGuard(key, boot_state.boot_nonce)
        self._response_buf = bytearray(64)
        self._status_buf = bytearray(ids.STATUS_LEN)
        self._periods = [0, 0, 0, 0, 0, 0]   # config keys 1..6, for the status record
        self._payload_buf = bytearray(8)
        # ESS and Battery values: written in place, the stack copies them (no allocation)
        self._temp_buf = bytearray(2)
        self._uv_buf = bytearray(1)
        self._battery_buf = bytearray(1)
        self.battery_pct = _BATTERY_NOT_KNOWN   # until the gauge's first sample
        self.notifications_skipped = 0   # ESS/Battery updates the stack had no buffer for
        self._adv_data, self._resp_data = self._advertising_payloads(gatt.stream_service_uuid)
        self.connection = None
        self.control_task = None
        self.stream_task = None
        self.cursor = -1          # next seq to send; -1 while not streaming
        self.replay_end = 0       # seqs below this are sent flagged HISTORICAL
        self._pending_since = -1  # tick when unsent samples were first seen; -1: none
        # how many pending samples fill a frame: records are 1 or more bytes (protocol.md
        # §4), so this is learnt from the frames sent; until then, assume 2-byte records
        self._full_frame_samples = (ids.FRAME_MAX_BYTES - _FRAME_OVERHEAD) // 2
        self.replays = 0          # REPLAY requests served: a frame in flight must not undo one
        self.gap_mark = 0         # gap notices at seqs below this were sent in this pass
        self.clock_set = False
        self.frames_sent = 0
        # Live vs HISTORICAL (protocol.md §4): a sample logged before this connection started
        # streaming, or already sent on it, goes out flagged HISTORICAL after a REPLAY; one
        # sent for the first time since is live, whatever REPLAY moved the cursor.
        self._stream_start = -1   # log.next_seq at this connection's first REPLAY
        self._sent_end = 0        # one past the highest seq sent on this connection

    # -- sensor side ---------------------------------------------------------------
    # The sampling hot path: allocates nothing (tests/test_firmware_ble.py runs it under
    # heap_lock). Trigger, documented in docs/protocol.md §3: every new sample updates its
    # characteristic and notifies the centrals that subscribed to it.
    def on_sample(self, channel, value):
        if channel == ids.CH_TEMPERATURE:
            # ESS Temperature is sint16 in 0.01 degC.
            struct.pack_into("<h", self._temp_buf, 0, raw_to_centi_celsius(value))
            self._publish(self.gatt.temperature, self._temp_buf)
        elif channel == ids.CH_UV:
            # ESS UV Index is uint8; the wire unit is UVI x 100.
            self._uv_buf[0] = (value + 50) // 100 if value < 25_550 else 255
            self._publish(self.gatt.uv_index, self._uv_buf)
        elif channel == ids.CH_BATTERY:
            self.battery_pct = (value + 128) >> 8 if value < 25_600 else 100
            self._battery_buf[0] = self.battery_pct
            self._publish(self.gatt.battery_level, self._battery_buf)
        self._refresh_progress()

    def _publish(self, characteristic, buf):
        try:
            characteristic.write(buf, True)   # send_update: notify subscribed centrals
        except OSError:   # no notification buffer free: the value is stored, one update lost
            self.notifications_skipped += 1

    def _refresh_progress(self):
        # The status record's fields that move with every sample (next_seq, tick, error
        # flags, battery; protocol.md §6), packed in place: Status is current on every read.
        # The rest changes only on events, which repack the whole record (_refresh_status).
        buf = self._status_buf
        struct.pack_into("<IIH", buf, _STATUS_NEXT_SEQ_AT, self.log.next_seq, self.clock.now(),
                         self._error_flags())
        buf[_STATUS_BATTERY_AT] = self.battery_pct
        self.gatt.status.write(buf)

    # -- advertising ---------------------------------------------------------------
    def _error_flags(self):
        flags = self.sampler.error_flags if self.sampler else 0
        if not self.clock_set:
            flags |= ids.ERR_CLOCK_NOT_SET
        if not self.key:
            flags |= ids.ERR_NOT_PROVISIONED
        return flags

    def _refresh_status(self):
        cfg = self.config
        periods = self._periods
        for i in range(6):
            periods[i] = cfg.get(i + 1)   # config keys 1..6 (protocol.md §5)
        control_codec.pack_status(
            self._status_buf, self.gatt.firmware_version, self.boot_state.boot_id,
            self.log.oldest_seq, self.log.next_seq, self.clock.now(), self._error_flags(),
            periods, self.battery_pct, self.guard.boot_nonce, self.guard.next_counter)
        self.gatt.status.write(self._status_buf)

    @staticmethod
    def _advertising_payloads(service_uuid):
        # protocol.md §2, built here rather than left to aioble's packing (which overflows in
        # argument order): Flags, Name and Manufacturer Data in the advertisement, so a
        # passive scanner (the gateway's, a BLE proxy) sees the battery and backlog; the
        # 128-bit Stream Service UUID in the scan response.
        return bytearray(_ADV_LEN), b"\x11\x07" + bytes(service_uuid)

    def _pack_advertisement(self):
        adv = self._adv_data
        name = self.name
        adv[0], adv[1], adv[2] = 2, _AD_FLAGS, _FLAGS_LE_GENERAL_NO_BREDR
        adv[3], adv[4] = len(name) + 1, _AD_COMPLETE_NAME
        for i in range(len(name)):
            adv[5 + i] = ord(name[i])
        at = 5 + len(name)
        adv[at], adv[at + 1] = 3 + ids.MANUFACTURER_DATA_LEN, _AD_MANUFACTURER
        struct.pack_into("<H", adv, at + 2, ids.COMPANY_ID)
        adv[at + 4:at + 4 + ids.MANUFACTURER_DATA_LEN] = control_codec.pack_manufacturer_data(
            self.gatt.firmware_version, self.battery_pct, len(self.log), bool(self.key),
            self.log.is_full())
        return adv

    async def serve_forever(self):
        while True:
            self._refresh_status()
            try:
                connection = await aioble.advertise(
                    _ADV_INTERVAL_US, adv_data=self._pack_advertisement(),
                    resp_data=self._resp_data, timeout_ms=ADV_REFRESH_MS)
            except aio.TimeoutError:   # nobody connected: advertise the current values
                continue
            if connection is None:   # advertising cancelled (aioble returns None): stop
                return
            await self.serve(connection)

    async def serve(self, connection):
        self.connection = connection
        self.cursor = -1
        self._stream_start = -1
        self._sent_end = 0
        self._refresh_status()
        control = self.control_task = aio.create_task(self._control_loop(connection))
        streamer = self.stream_task = aio.create_task(self._stream_loop(connection))
        try:
            await self._until_disconnected_or_failed(connection, control, streamer)
        finally:
            control.cancel()
            streamer.cancel()
            self.cursor = -1
            self.connection = None

    async def _until_disconnected_or_failed(self, connection, control, streamer):
        # A task that died would leave the patch connected but mute: end the link instead,
        # so the gateway reconnects and both sides start clean.
        while connection.is_connected():
            if control.done() or streamer.done():
                print("ble link: a task ended; disconnecting")
                try:
                    await connection.disconnect()
                except Exception:   # already gone (a timeout waiting for the event): go on
                    pass
                return
            await aio.sleep_ms(_LINK_WATCH_MS)

    # -- control point ---------------------------------------------------------------
    async def _control_loop(self, connection):
        while True:
            written = await self.gatt.control_point.written()
            if not written:   # woken without a write (a wake-up left over from a dropped link)
                continue
            writer, data = written
            if writer is not None and writer is not connection:
                # Another central wrote: the link served here is gone although the stack
                # never reported it. End it (the watcher disconnects it) and serve the new one.
                print("ble link: control point written on another connection; ending this one")
                return
            counter = self.guard.next_counter
            opcode, status, operands = self.guard.parse(data)
            if self.guard.next_counter != counter:
                # Status shows the counter the next request needs, also to a central that
                # connects while this link is still thought alive.
                self._refresh_status()
            payload = None
            if status == ids.ST_SUCCESS:
                try:
                    status, payload = self._execute(opcode, operands)
                except Exception as e:  # a bug must cost one request, not the control point
                    print("control point:", opcode, "failed:", repr(e))
                    status, payload = ids.ST_OPERATION_FAILED, None
            response = self.guard.respond(self._response_buf, data, opcode, status, payload)
            try:
                await self.gatt.control_point.indicate(connection, response)
            except Exception:  # link gone or confirmation timed out; the central will retry
                pass

    def _execute(self, opcode, operands):
        log = self.log
        if opcode == ids.OP_SET_TIME:
            self.clock_set = True
            struct.pack_into("<HI", self._payload_buf, 0, self.boot_state.boot_id, self.clock.now())
            return ids.ST_SUCCESS, memoryview(self._payload_buf)[:6]
        if opcode == ids.OP_ACK:
            log.ack(operands)
            self._refresh_status()
            return ids.ST_SUCCESS, None
        if opcode == ids.OP_REPLAY:
            # Answer with the first seq at or after from_seq that holds a sample, not just the
            # log's oldest: seqs may have no record (the hole a reboot leaves, a record that
            # failed its CRC), and the gateway moves past them only on this answer.
            start = self._first_held(operands if operands > log.oldest_seq else log.oldest_seq)
            self.cursor = start
            if self._stream_start < 0:
                self._stream_start = log.next_seq
            # HISTORICAL up to what was logged before streaming began or already sent here;
            # what follows goes out for the first time: live (protocol.md §4).
            end = self._sent_end if self._sent_end > self._stream_start else self._stream_start
            self.replay_end = end if end < log.next_seq else log.next_seq
            self.gap_mark = operands   # gaps in a hole before start are re-sent too
            self.replays += 1
            struct.pack_into("<II", self._payload_buf, 0, start, log.next_seq)
            return ids.ST_SUCCESS, self._payload_buf
        if opcode == ids.OP_SET_CONFIG:
            cfg_key, value = operands
            if not self.config.set(cfg_key, value):
                return ids.ST_INVALID_OPERAND, None
            self.config.save()
            self._refresh_status()
            return ids.ST_SUCCESS, None
        if opcode == ids.OP_GET_STATUS:
            self._refresh_status()
            return ids.ST_SUCCESS, self._status_buf
        if opcode == ids.OP_IDENTIFY:
            self.board.identify(operands)
            return ids.ST_SUCCESS, None
        return ids.ST_OPCODE_NOT_SUPPORTED, None

    # -- streaming -----------------------------------------------------------------
    def _first_held(self, seq):
        # The first seq >= seq with a readable record, or next_seq. Reads flash: REPLAY only.
        log = self.log
        seq = log.next_record(seq)
        while seq < log.next_seq and log.boot(seq) < 0:
            seq = log.next_record(seq + 1)
        return seq

    def _frame_due(self):
        # Called every STREAM_POLL_MS: reads no record (reading an unflushed one would force a
        # flash sync per sample). The age of the oldest unsent sample is taken from our own
        # clock, noted when next_seq first passes the cursor.
        log = self.log
        if self.cursor < 0 or self.cursor >= log.next_seq:
            self._pending_since = -1
            return False
        if self.cursor < self.replay_end:
            return True
        now = self.clock.now()
        if self._pending_since < 0:
            self._pending_since = now
        if (now - self._pending_since) * ids.TICK_MS >= \
                self.config.get(ids.CFG_FLUSH_INTERVAL_S) * 1000:
            return True
        # Enough pending to fill a frame, as many as the last full one held.
        return log.next_seq - self.cursor >= self._full_frame_samples

    def _frame_bytes(self, connection):
        frame_bytes = (connection.mtu or 23) - ids.ATT_NOTIFY_OVERHEAD
        if frame_bytes > ids.FRAME_MAX_BYTES:
            return ids.FRAME_MAX_BYTES
        least = ids.ATT_MTU_MIN - ids.ATT_NOTIFY_OVERHEAD
        return frame_bytes if frame_bytes > least else least

    async def _stream_loop(self, connection):
        log = self.log
        enc = self.encoder
        while connection.is_connected():
            if not self._frame_due():
                await aio.sleep_ms(_STREAM_POLL_MS)
                continue
            seq = self.cursor
            boot = log.boot(seq)   # a frame carries one boot's records: their own boot id
            if boot < 0:           # no record at seq (a hole): skip to the next one
                self.cursor = log.next_record(seq + 1)
                continue
            historical = seq < self.replay_end
            replays = self.replays
            limit, gaps_sent = await self._send_gaps(connection, seq, historical, replays)
            if self.replays != replays:
                continue   # a REPLAY moved the cursor while a gap notice was in flight
            enc.set_max_frame_bytes(self._frame_bytes(connection))
            enc.start(boot, seq, log.tick(seq), historical, gaps_sent > 0)
            # A frame ends when full, at next_seq, at a boot change, at a hole and before the
            # next gap: its seqs are contiguous (protocol.md §4).
            while (seq < limit and seq < log.next_seq and log.boot(seq) == boot
                   and enc.add(log.channel(seq), log.tick(seq), log.value(seq))):
                seq += 1
            caught_up = seq >= log.next_seq
            frame = enc.finish()
            if enc.count >= _ESTIMATE_MIN_SAMPLES:   # as many as its bytes per sample fill
                self._full_frame_samples = (enc.count * (enc.max_frame_bytes - _FRAME_OVERHEAD)
                                            // (len(frame) - _FRAME_OVERHEAD))
            await self._notify(connection, frame)
            self.frames_sent += 1
            if self.replays != replays:
                continue   # a REPLAY moved the cursor while this frame was in flight
            self.cursor = seq
            if seq > self._sent_end:
                self._sent_end = seq
            if caught_up:
                self._pending_since = -1   # what arrived during the notify waits afresh

    async def _send_gaps(self, connection, seq, historical, replays):
        # Gap notices (protocol.md §4.1) for the frame about to start at seq: every gap at or
        # before seq not yet sent in this pass, so that a gap in a hole goes out too. Returns
        # the seq of the next gap ahead (the frame must end before it) and how many were sent.
        limit = NO_GAP_AHEAD
        sent = 0
        gaps = self.log.gaps()
        for g in gaps:
            if g.seq_at > seq:
                if g.seq_at < limit:
                    limit = g.seq_at
            elif g.seq_at >= self.gap_mark:
                await self._notify(connection, self.encoder.gap_frame(
                    g.boot_id, g.seq_at, g.first_tick, g.last_tick, g.counts, historical))
                sent += 1
                if self.replays != replays:
                    return limit, sent
        self.gap_mark = seq + 1
        return limit, sent

    async def _notify(self, connection, frame):
        backoff_ms = 5
        while True:
            if not connection.is_connected():
                return   # the link dropped: REPLAY on the next one sends it again
            try:
                self.gatt.samples.notify(connection, frame)
                return
            except OSError as e:
                if e.errno != _ENOMEM:
                    raise
            await aio.sleep_ms(backoff_ms)
            if backoff_ms < 200:
                backoff_ms *= 2
