"""Deduplicate raw samples by (subject, boot, seq) and surface `data_loss` (sans-I/O).

Delivery is at least once: a gateway restart, a reconnect or an outbox replay can send a
samples message again. `SampleDeduper.on_samples` returns each sample once; `on_alert`
turns a `data_loss` alert into a `DataLoss` event (samples the patch never took or logged).
Memory stays bounded: per (subject, boot) a watermark below which every seq was seen, and
the seqs seen above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway import samples_message

MAX_ABOVE_WATERMARK = 100_000   # seqs held above a watermark before it is moved past a hole


@dataclass(frozen=True)
class SampleRow:
    subject: str
    boot: int
    seq: int
    prop: str            # skin_temp_c, uv_index, capacitance_pf, battery_pct
    utc_ms: int | None   # None while that boot's time is unknown
    value: float         # SI units (°C, UVI, pF, %)
    historical: bool     # backfill after a replay


@dataclass(frozen=True)
class DataLoss:
    """Samples a patch did not take or log (docs/mqtt.md `data_loss`)."""

    subject: str
    ts: int
    from_utc_ms: int | None
    to_utc_ms: int | None
    samples: dict[str, int]


@dataclass
class _Seen:
    watermark: int
    above: set[int] = field(default_factory=set)

    def add(self, seq: int) -> bool:
        if seq <= self.watermark or seq in self.above:
            return False
        self.above.add(seq)
        while self.watermark + 1 in self.above:
            self.watermark += 1
            self.above.discard(self.watermark)
        if len(self.above) > MAX_ABOVE_WATERMARK:   # a hole that will never fill
            self.watermark = min(self.above) - 1
            while self.watermark + 1 in self.above:
                self.watermark += 1
                self.above.discard(self.watermark)
        return True


class SampleDeduper:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, int], _Seen] = {}
        self._columns: dict[str, tuple[list[str], list[float]]] = {}
        self.duplicates = 0

    def on_meta(self, subject: str, doc: dict) -> None:
        """meta names the property order and scales of that subject's samples messages."""
        columns = doc.get("samples")
        if isinstance(columns, dict):
            self._columns[subject] = (list(columns["properties"]), list(columns["scale"]))

    def on_samples(self, subject: str, doc: dict) -> list[SampleRow]:
        props, scales = self._columns.get(
            subject, (list(samples_message.PROPERTIES), list(samples_message.SCALES)))
        boot = int(doc["boot"])
        historical = bool(doc.get("hist", False))
        rows = samples_message.decode(doc)
        key = (subject, boot)
        seen = self._seen.get(key)
        if seen is None and rows:
            seen = self._seen[key] = _Seen(rows[0].seq - 1)
        out = []
        for s in rows:
            assert seen is not None
            if not seen.add(s.seq):
                self.duplicates += 1
                continue
            out.append(SampleRow(subject, boot, s.seq, props[s.prop], s.utc_ms,
                                 s.raw * scales[s.prop], historical))
        return out

    @staticmethod
    def on_alert(subject: str, doc: dict) -> DataLoss | None:
        if doc.get("kind") != "data_loss":
            return None
        return DataLoss(subject, int(doc["ts"]), doc.get("from"), doc.get("to"),
                        dict(doc.get("samples", {})))
