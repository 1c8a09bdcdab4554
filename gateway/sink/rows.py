"""The research sink's core (sans-I/O): MQTT messages in, database rows out, in batches.

`MessageDecoder.decode(topic, payload)` turns one message from the gateway's topics into
`Rows`: one `SampleRecord` per raw sample (`{subject}/samples`, decoded with meta's scales),
one `TwinRevision` per twin revision (`{subject}/delta`), one `SnapshotRecord` per whole twin
(`{subject}/twin`), their leaves decoded from the wire's `[v, age, q]` to `{"v", "t", "q"}`
(gateway/twin_message.py: `t` in UTC ms, -1 unknown), one `AlertRecord` per alert or
`data_loss` event. Payloads are read by their MQTT 5 Content Type (zlib samples included,
gateway/payload_encoding.py). A message it cannot read
becomes a `Rejected` record (stored, so nothing is dropped without a trace). `meta` only
teaches it a subject's property order and scales.

`Batcher` gathers the rows of several messages with the token that acknowledges each
(the adapter's business: a PUBACK), and says when a batch is due: enough messages or rows,
or the oldest has waited long enough. The adapter commits a batch's rows, and only then
acknowledges its tokens, in arrival order.

Keys (docs/sink.md): samples (subject, boot, seq); deltas and snapshots (subject, rev);
alerts (subject, ts, kind, digest of the payload); rejected messages (digest of topic and
payload). A message delivered twice yields the same keys, so the database keeps one row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gateway import payload_encoding, samples_message, twin_message
from gateway.mqtt import topics

DEFAULT_MAX_MESSAGES = 500
DEFAULT_MAX_ROWS = 20_000
DEFAULT_MAX_WAIT_S = 0.5


class SampleRecord(NamedTuple):
    subject: str
    boot: int
    seq: int
    prop: str               # skin_temp_c, uv_index, capacitance_pf, battery_pct
    utc_ms: int | None      # None while that boot's time is unknown
    raw: int                # the integer the patch sent
    value: float            # SI units: raw × meta's samples.scale
    historical: bool
    time_uncertain: bool


class TwinRevision(NamedTuple):
    """A delta: what moved at `rev` (`changed` and `removed` as JSON text)."""

    subject: str
    rev: int
    sess: int
    ts_ms: int
    changed: str
    removed: str


class SnapshotRecord(NamedTuple):
    """The whole twin at `rev` (`state` as JSON text)."""

    subject: str
    rev: int
    sess: int
    ts_ms: int
    state: str


class AlertRecord(NamedTuple):
    subject: str
    ts_ms: int
    kind: str
    digest: str             # of the payload: two alerts of one kind in one cycle differ
    active: bool | None     # None for events (data_loss)
    body: str               # the whole payload, JSON text


class Rejected(NamedTuple):
    digest: str             # of topic and payload: a redelivered reject is one row
    topic: str
    payload: bytes
    reason: str


@dataclass
class Rows:
    samples: list[SampleRecord] = field(default_factory=list)
    revisions: list[TwinRevision] = field(default_factory=list)
    snapshots: list[SnapshotRecord] = field(default_factory=list)
    alerts: list[AlertRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    TABLES = ("samples", "revisions", "snapshots", "alerts", "rejected")

    def extend(self, other: Rows) -> None:
        for name in self.TABLES:
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return sum(len(getattr(self, name)) for name in self.TABLES)

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in self.TABLES}


def canonical_json(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:32]


def rejected(topic: str, payload: bytes, reason: str) -> Rows:
    return Rows(rejected=[Rejected(digest(topic.encode(), payload), topic, payload, reason)])


def _int(doc: dict, name: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: {value!r} is not an integer")
    return value


def _object(doc: dict, name: str) -> dict:
    value = doc.get(name)
    if not isinstance(value, dict):
        raise ValueError(f"{name}: {value!r} is not an object")
    return value


class MessageDecoder:
    """Decodes the messages of one gateway's topic root (`dermtwin/v1/{gw}`)."""

    def __init__(self, root: str):
        self.root = root
        self._columns: dict[str, tuple[list[str], list[float]]] = {}

    def decode(self, topic: str, payload: bytes, content_type: str | None = None) -> Rows:
        found = topics.classify(self.root, topic)
        if found is None:
            return rejected(topic, payload, f"not a topic of {self.root}")
        row, subject = found
        if not payload:
            return Rows()   # a cleared retained message
        try:
            doc = json.loads(payload_encoding.json_bytes(payload, content_type))
            if not isinstance(doc, dict):
                raise ValueError("payload is not a JSON object")
            if subject is None:
                return Rows()   # state, cmd: nothing for the sink
            if row is topics.META:
                self._on_meta(subject, doc)
                return Rows()
            if row is topics.SAMPLES:
                return Rows(samples=self._samples(subject, doc))
            if row is topics.DELTA:
                ts = _int(doc, "ts")
                return Rows(revisions=[TwinRevision(
                    subject, _int(doc, "rev"), _int(doc, "sess"), ts,
                    canonical_json(twin_message.leaves(_object(doc, "set"), ts)),
                    canonical_json(doc.get("unset", [])))])
            if row is topics.TWIN:
                ts = _int(doc, "ts")
                return Rows(snapshots=[SnapshotRecord(
                    subject, _int(doc, "rev"), _int(doc, "sess"), ts,
                    canonical_json(twin_message.leaves(_object(doc, "state"), ts)))])
            if row is topics.ALERT:
                kind = doc.get("kind")
                if not isinstance(kind, str):
                    raise ValueError(f"kind: {kind!r} is not a string")
                active = doc.get("active")
                body = canonical_json(doc)
                return Rows(alerts=[AlertRecord(
                    subject, _int(doc, "ts"), kind, digest(body.encode()),
                    active if isinstance(active, bool) else None, body)])
            return Rows()   # reported and anything else the sink does not keep
        except (KeyError, TypeError, ValueError, IndexError) as e:
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            return rejected(topic, payload, f"{row.leaf}: {detail}")

    def _on_meta(self, subject: str, doc: dict) -> None:
        columns = doc.get("samples")
        if isinstance(columns, dict):
            props = [str(p) for p in columns["properties"]]
            scales = [float(s) for s in columns["scale"]]
            if len(props) != len(scales):
                raise ValueError("samples: properties and scale differ in length")
            self._columns[subject] = (props, scales)

    def _samples(self, subject: str, doc: dict) -> list[SampleRecord]:
        props, scales = self._columns.get(
            subject, (list(samples_message.PROPERTIES), list(samples_message.SCALES)))
        boot = _int(doc, "boot")
        historical = bool(doc.get("hist", False))
        uncertain = bool(doc.get("time_uncertain", False))
        out = []
        for s in samples_message.decode(doc):
            if s.prop >= len(props):
                raise ValueError(f"c: property {s.prop} is not in meta's samples.properties")
            out.append(SampleRecord(subject, boot, s.seq, props[s.prop], s.utc_ms, s.raw,
                                    s.raw * scales[s.prop], historical, uncertain))
        return out


@dataclass
class Batch:
    rows: Rows
    tokens: list[Any]             # acknowledge these, in this order, after the commit
    parts: list[tuple[Rows, str, bytes]]   # per message: its rows, topic and payload

    @property
    def messages(self) -> int:
        return len(self.tokens)


class Batcher:
    """Collects decoded messages until a batch is due (`due`), then hands it over (`take`)."""

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES,
                 max_rows: int = DEFAULT_MAX_ROWS, max_wait_s: float = DEFAULT_MAX_WAIT_S):
        if max_messages < 1 or max_rows < 1 or max_wait_s < 0:
            raise ValueError("batch limits must be positive")
        self.max_messages = max_messages
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._parts: list[tuple[Rows, str, bytes]] = []
        self._tokens: list[Any] = []
        self._rows = 0
        self._first_at_s: float | None = None

    def __len__(self) -> int:
        return len(self._tokens)

    def add(self, rows: Rows, token: Any, now_s: float, topic: str = "",
            payload: bytes = b"") -> None:
        if self._first_at_s is None:
            self._first_at_s = now_s
        self._parts.append((rows, topic, payload))
        self._tokens.append(token)
        self._rows += len(rows)

    def due(self, now_s: float) -> bool:
        if not self._tokens:
            return False
        return (len(self._tokens) >= self.max_messages or self._rows >= self.max_rows
                or now_s - (self._first_at_s or now_s) >= self.max_wait_s)

    def seconds_until_due(self, now_s: float) -> float | None:
        """None while empty; 0 when due now."""
        if self._first_at_s is None:
            return None
        if self.due(now_s):
            return 0.0
        return max(0.0, self._first_at_s + self.max_wait_s - now_s)

    def take(self) -> Batch:
        rows = Rows()
        for part, _, _ in self._parts:
            rows.extend(part)
        batch = Batch(rows, self._tokens, self._parts)
        self._parts, self._tokens, self._rows, self._first_at_s = [], [], 0, None
        return batch
