"""Store → twin → outbox, one transaction per cycle; acknowledgements only after it commits.

Sessions submit sample batches; every cycle takes all waiting batches, inserts them, feeds
the twin engine, runs one batched model step and writes the resulting MQTT messages to the
outbox, all in one SQLite transaction. Only then does each patch get its ACK. If the write
fails (disk full) nothing is acknowledged: the patches keep their samples and the sessions
are closed so they REPLAY later. The `store` alarm goes up on the first failed write and
clears only when a cycle carrying samples commits (a cycle with nothing to write proves
nothing about the disk). Any other failure of a cycle (a bug, a damaged database) also tells
every waiting session that nothing was committed, then propagates to the task's supervisor.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway import payload_encoding, samples_message, twin_message
from gateway.alarms import Alarms
from gateway.clock import now_ms
from gateway.model_registry import CHANNEL_SCALE
from gateway.mqtt import topics
from gateway.mqtt.topics import Topic
from gateway.outbox import Outbox
from gateway.store import DatabaseCorrupt, Store, StoreError
from gateway.twin import TwinEngine, TwinUpdate
from gateway.values import LostSamples, SampleBatch

log = logging.getLogger(__name__)

# When a cycle runs (docs/performance.md, "Latency"): a live batch starts one at once, with
# whatever else has arrived by then; a backlog drain (only historical batches waiting)
# runs at most once per DRAIN_GATHER_S (its first batch at once) and gathers up to
# DRAIN_BATCH_SAMPLES, so that one transaction, twin step and outbox write serve thousands
# of samples rather than one frame's worth.
DRAIN_GATHER_S = 0.1
DRAIN_BATCH_SAMPLES = 20_000
IDLE_STEP_S = 1.0
CHANNEL_PROPERTIES = tuple(prop for _, prop in CHANNEL_SCALE.values())


def data_loss_alert(gap: LostSamples, now_ms: int) -> dict:
    """The `data_loss` alert for samples a patch did not log (docs/mqtt.md)."""
    return {"schema": topics.SCHEMA_VERSION, "ts": now_ms, "kind": "data_loss",
            "from": gap.first_utc_ms, "to": gap.last_utc_ms,
            "samples": dict(zip(CHANNEL_PROPERTIES, gap.counts, strict=True))}


@dataclass
class IngestStats:
    cycles: int = 0
    samples_committed: int = 0
    samples_duplicate: int = 0
    deltas: int = 0
    snapshots: int = 0
    alerts: int = 0
    gaps: int = 0                  # gap records (samples a patch did not log) stored
    sample_messages: int = 0       # {subject}/samples messages written to the outbox
    commit_failures: int = 0
    store_alarm: bool = False      # the last commit failed: nothing is being acknowledged
    last_error: str | None = None
    last_rev: dict[str, int] = field(default_factory=dict)


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class Ingest:
    def __init__(self, store: Store, outbox: Outbox, engine: TwinEngine,
                 topic: Callable[..., str], on_outbox_written: Callable[[], None],
                 on_alarm_change: Callable[[], object] = lambda: None,   # result ignored
                 publish_samples: bool = True, alarms: Alarms | None = None,
                 samples_format: str = payload_encoding.JSON):
        self.publish_samples = publish_samples
        self.samples_format = samples_format   # gateway/payload_encoding.py
        self.alarms = alarms if alarms is not None else Alarms()
        self.store = store
        self.outbox = outbox
        self.engine = engine
        self.topic = topic
        self.on_outbox_written = on_outbox_written
        self.on_alarm_change = on_alarm_change
        self.stats = IngestStats()
        self._waiting: list[tuple[Any, SampleBatch]] = []
        self._waiting_samples = 0
        self._live_waiting = False
        self._last_cycle_s = float("-inf")
        self._failed_from: dict[str, int] = {}   # device → first seq of a failed commit
        self._wake = asyncio.Event()

    def submit(self, link: Any, batch: SampleBatch) -> None:
        first = not self._waiting
        self._waiting.append((link, batch))
        self._waiting_samples += len(batch)
        self._live_waiting = self._live_waiting or not batch.historical
        # Wake the cycle for the first batch and once the gathered batches must go, not for
        # every frame of a drain in between (a wake-up per frame cost more than the frame).
        if first or self._gathered():
            self._wake.set()

    def store_refused(self, detail: str) -> None:
        """A write outside the ingest cycle (a patch's clock anchor) failed: the same `store`
        alarm as a failed commit, cleared by the next cycle that commits samples."""
        self._raise_store_alarm(detail, detail, now_ms())

    def _raise_store_alarm(self, log_line: str, error: str, at_ms: int) -> None:
        raised = not self.stats.store_alarm
        self.stats.store_alarm = True
        self.stats.last_error = error
        self.alarms.raise_("store", f"not acknowledging: {error}", at_ms)
        if raised:
            self.on_alarm_change()
            log.error("ingest: %s", log_line)

    def put(self, row: Topic, subject: str, payload: dict,
            payload_format: str = payload_encoding.JSON) -> None:
        """One message on `row` (docs/mqtt.md's table: retain, expiry, QoS) for `subject`,
        into the outbox inside the caller's transaction."""
        self.outbox.put(self.topic(subject, row.leaf),
                        payload_encoding.encode(encode(payload), payload_format), qos=row.qos,
                        retain=row.retained, expiry_s=row.expiry_s)

    def publish_updates(self, updates: list[TwinUpdate]) -> None:
        """Write twin revisions and their messages (inside the caller's transaction)."""
        for update in updates:
            twin = self.engine.twins[update.subject]
            self.store.save_twin(update.subject, twin.rev, twin.to_saved())
            if update.delta is not None:
                self.put(topics.DELTA, update.subject, twin_message.delta(update.delta))
                self.stats.deltas += 1
            if update.snapshot is not None:
                self.put(topics.TWIN, update.subject, twin_message.twin(update.snapshot))
                self.stats.snapshots += 1
            for alert in update.alerts:
                self.put(topics.ALERT, update.subject, alert)
                self.stats.alerts += 1
            self.stats.last_rev[update.subject] = twin.rev

    def publish_raw(self, batches: list[SampleBatch]) -> None:
        """`{subject}/samples` for every sample not committed before (inside the caller's
        transaction): one message per device, boot and kind (live or backfill) per cycle.
        Sessions commit each device's seqs in order, so a sample is new when it lies past the
        device's watermark and past the batches before it in this cycle."""
        watermark: dict[str, int] = {}
        pending: dict[tuple[str, int, bool, bool], list[tuple[SampleBatch, np.ndarray]]] = {}
        for batch in batches:
            if batch.device_id not in watermark:
                watermark[batch.device_id] = self.store.committed_seq(batch.device_id)
            fresh = batch.seq > watermark[batch.device_id]
            if len(batch):
                watermark[batch.device_id] = max(watermark[batch.device_id], int(batch.seq[-1]))
            if fresh.any() and batch.device_id in self.engine.subject_of:
                key = (batch.device_id, batch.boot_id, batch.historical, batch.time_uncertain)
                pending.setdefault(key, []).append((batch, fresh))
        for (device_id, boot_id, historical, time_uncertain), parts in pending.items():
            seq, utc, channel, value = (
                np.concatenate([getattr(b, name)[fresh] for b, fresh in parts])
                for name in ("seq", "utc_ms", "channel", "value"))
            for doc in samples_message.encode_runs_arrays(boot_id, seq, utc, channel, value,
                                                          historical=historical,
                                                          time_uncertain=time_uncertain):
                self.put(topics.SAMPLES, self.engine.subject_of[device_id], doc,
                         self.samples_format)
                self.stats.sample_messages += 1

    def publish_gaps(self, gaps: list[tuple[str, LostSamples]], now_ms: int) -> None:
        """One `data_loss` alert per newly stored gap (inside the caller's transaction)."""
        for device_id, gap in gaps:
            self.stats.gaps += 1
            log.warning("ingest: %s did not log %d samples (boot %d, before seq %d)",
                        device_id, gap.count, gap.boot_id, gap.seq_at)
            subject = self.engine.subject_of.get(device_id)
            if subject is not None:
                self.put(topics.ALERT, subject, data_loss_alert(gap, now_ms))
                self.stats.alerts += 1

    def _after_failure(self, waiting: list[tuple[Any, SampleBatch]]
                       ) -> list[tuple[Any, SampleBatch]]:
        """Drop the batches a session sent on after a failed commit of its device, until
        its REPLAY starts again at or before the first failed seq. Committing them would
        move the device's watermark past samples that were never stored (acknowledgements
        and REPLAY go by the watermark): they are replayed instead."""
        kept: list[tuple[Any, SampleBatch]] = []
        dropped: list[tuple[Any, SampleBatch]] = []
        for link, batch in waiting:
            first_failed = self._failed_from.get(batch.device_id)
            if first_failed is not None and len(batch) and int(batch.seq[0]) <= first_failed:
                del self._failed_from[batch.device_id]   # the replay has come back
                first_failed = None
            (kept if first_failed is None else dropped).append((link, batch))
        for link in {id(link): link for link, _ in dropped}.values():
            link.on_commit_failed("an earlier batch of this patch was not stored")
        return kept

    def cycle(self, now_ms: int) -> None:
        waiting, self._waiting = self._after_failure(self._waiting), []
        self._waiting_samples, self._live_waiting = 0, False
        batches = [batch for _, batch in waiting]
        changes_before = self.store.conn.total_changes
        try:
            with self.store.transaction():
                if self.publish_samples:
                    self.publish_raw(batches)   # before the insert: it compares watermarks
                new_rows = self.store.insert_samples(batches)
                self.publish_gaps(self.store.insert_gaps(batches), now_ms)
                for batch in batches:
                    self.engine.ingest(batch)
                self.publish_updates(self.engine.step(now_ms))
        except DatabaseCorrupt as e:
            self.stats.commit_failures += 1
            self._fail_waiting(waiting, str(e))
            raise
        except StoreError as e:
            self.stats.commit_failures += 1
            self._raise_store_alarm(f"{e}; not acknowledging {len(batches)} batches", str(e),
                                    now_ms)
            self._fail_waiting(waiting, str(e))
            return
        except BaseException as e:
            self.stats.commit_failures += 1
            self._fail_waiting(waiting, f"ingest failed: {type(e).__name__}: {e}")
            raise
        self.stats.cycles += 1
        wrote_samples = bool(batches) and self.store.conn.total_changes > changes_before
        if self.stats.store_alarm and wrote_samples:
            log.warning("ingest: the store accepts writes again; acknowledging resumes")
            self.stats.store_alarm = False
            self.alarms.clear("store")
            self.on_alarm_change()
        total = sum(len(b) for b in batches)
        self.stats.samples_committed += new_rows
        self.stats.samples_duplicate += total - new_rows
        highest: dict[int, tuple[Any, int]] = {}
        for link, batch in waiting:
            last = int(batch.seq[-1])
            if id(link) not in highest or highest[id(link)][1] < last:
                highest[id(link)] = (link, last)
        for link, last in highest.values():
            link.on_committed(last)
        self.on_outbox_written()

    def _fail_waiting(self, waiting: list[tuple[Any, SampleBatch]], reason: str) -> None:
        """Nothing of this cycle is durable: every session it concerned closes and replays, and
        each device's later batches are held back until its replay reaches the first seq that
        failed (a later frame committed first would move the watermark past a hole)."""
        for _, batch in waiting:
            if len(batch):
                first = min(int(batch.seq[0]), self._failed_from.get(batch.device_id,
                                                                     int(batch.seq[0])))
                self._failed_from[batch.device_id] = first
        for link in {id(link): link for link, _ in waiting}.values():
            link.on_commit_failed(reason)

    def _gathered(self) -> bool:
        return self._live_waiting or self._waiting_samples >= DRAIN_BATCH_SAMPLES

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                # Not asyncio.wait_for: on Python 3.11 it loses a cancel that arrives as the
                # wait ends (gh-86296), and the gateway's stop then waits for this task forever.
                async with asyncio.timeout(IDLE_STEP_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            # A backlog drain gathers, but its first batch (nothing committed for a while)
            # goes at once: the drain starts as soon as the patch sends.
            deadline = self._last_cycle_s + DRAIN_GATHER_S
            if self._waiting and not self._gathered() and deadline > loop.time():
                try:   # submit wakes it once they are gathered
                    async with asyncio.timeout_at(deadline):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
            else:
                await asyncio.sleep(0)   # frames already delivered join this cycle
            if self._waiting:
                self._last_cycle_s = loop.time()
            self.cycle(now_ms())
