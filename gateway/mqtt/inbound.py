"""Inbound MQTT, sans-I/O: what the gateway accepts on `{subject}/desired` and `cmd`
(design.md §5, docs/mqtt.md). Bytes and topics in; validated values, or an `InboundError`
naming the field and why, out. Nothing here touches the network, the store or a patch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from gateway.mqtt import topics
from gateway.protocol.constants import CFG_VALUE_MAX, CFG_VALUE_MIN, ConfigKey

MAX_PAYLOAD_BYTES = 4096
# What every JSON consumer holds exactly (JavaScript's Number.MAX_SAFE_INTEGER): a larger
# `ver` would read back as another number, and one near 2^63 would lock configuration for good.
MAX_VER = 2**53 - 1
MAX_IDENTIFY_S = 255           # IDENTIFY carries seconds as a u8
DEFAULT_IDENTIFY_S = 5
# cfg names on MQTT: the SET_CONFIG keys (protocol.md §5) in lower case.
CONFIG_KEYS: dict[str, ConfigKey] = {key.name.lower(): key for key in ConfigKey}
CONFIG_NAMES: dict[ConfigKey, str] = {key: name for name, key in CONFIG_KEYS.items()}
OPS = ("identify", "resync", "reset_config")
NEEDS_SUBJECT = ("identify", "reset_config")
REPORTED_STATES = ("applied", "pending", "refused")


class InboundError(ValueError):
    """A message is refused; `field` names the part at fault (e.g. `cfg.temp_period_s`)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Desired:
    ver: int
    cfg: dict[ConfigKey, int]

    def cfg_by_name(self) -> dict[str, int]:
        return cfg_by_name(self.cfg)


@dataclass(frozen=True)
class Command:
    op: str
    subject: str | None = None
    seconds: int = DEFAULT_IDENTIFY_S


def cfg_by_name(cfg: dict) -> dict[str, int]:
    return {CONFIG_NAMES[ConfigKey(k)]: int(v) for k, v in sorted(cfg.items())}


def classify(topic_root: str, topic: str) -> (
        tuple[Literal["desired"], str] | tuple[Literal["cmd"], None] | None):
    """`("desired", subject)` for `{root}/{subject}/desired`, `("cmd", None)` for `{root}/cmd`,
    None for anything else (the inbound rows of gateway/mqtt/topics.py)."""
    for row in topics.INBOUND:
        subject = row.match(topic_root, topic)
        if subject is None:
            continue
        if row is topics.DESIRED:
            return ("desired", subject)
        if row is topics.CMD:
            return ("cmd", None)
    return None


def _json_object(payload: bytes) -> dict:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InboundError("payload", f"{len(payload)} bytes, at most {MAX_PAYLOAD_BYTES}")
    try:
        doc = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InboundError("payload", f"not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InboundError("payload", f"must be a JSON object, not {type(doc).__name__}")
    return doc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_desired(payload: bytes) -> Desired:
    """`{"ver": n, "cfg": {name: seconds}}`; other top-level fields are ignored."""
    doc = _json_object(payload)
    if "ver" not in doc:
        raise InboundError("ver", "missing")
    ver = doc["ver"]
    if not _is_int(ver) or not 0 <= ver <= MAX_VER:
        raise InboundError("ver", f"{json.dumps(ver)} is not an integer 0..{MAX_VER}")
    if "cfg" not in doc:
        raise InboundError("cfg", "missing")
    raw = doc["cfg"]
    if not isinstance(raw, dict):
        raise InboundError("cfg", "must be an object of {key: seconds}")
    cfg: dict[ConfigKey, int] = {}
    for name, value in raw.items():
        key = CONFIG_KEYS.get(name)
        if key is None:
            raise InboundError(f"cfg.{name}",
                               f"unknown key (known: {', '.join(CONFIG_KEYS)})")
        if not _is_int(value) or not CFG_VALUE_MIN <= value <= CFG_VALUE_MAX:
            raise InboundError(f"cfg.{name}", f"{json.dumps(value)} is not an integer "
                               f"{CFG_VALUE_MIN}..{CFG_VALUE_MAX} (seconds)")
        cfg[key] = value
    return Desired(ver, cfg)


def peek_ver(payload: bytes) -> int | None:
    """The `ver` of a refused message when it has a usable one, for the answer."""
    try:
        ver = json.loads(bytes(payload).decode("utf-8")).get("ver")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return ver if _is_int(ver) and 0 <= ver <= MAX_VER else None


def reported(ver: int | None, state: str, detail: str | None, ts_ms: int,
             cfg: dict) -> dict:
    """The `{subject}/reported` payload; `cfg` by ConfigKey or by name."""
    if state not in REPORTED_STATES:
        raise ValueError(f"state {state!r}")
    return {"schema": topics.SCHEMA_VERSION, "ver": ver, "state": state, "detail": detail, "ts": ts_ms,
            "cfg": cfg_by_name(cfg) if all(isinstance(k, int) for k in cfg) else dict(cfg)}


def parse_command(payload: bytes) -> Command:
    """`{"op": "identify", "subject": s, "seconds": n}`, `{"op": "resync"[, "subject": s]}`
    or `{"op": "reset_config", "subject": s}`."""
    doc = _json_object(payload)
    op = doc.get("op")
    if op is None:
        raise InboundError("op", "missing")
    if op not in OPS:
        raise InboundError("op", f"{json.dumps(op)} is not one of {', '.join(OPS)}")
    subject = doc.get("subject")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise InboundError("subject", "must be a non-empty string")
    if op in NEEDS_SUBJECT and subject is None:
        raise InboundError("subject", f"missing ({op} needs a subject)")
    if op == "identify":
        seconds = doc.get("seconds", DEFAULT_IDENTIFY_S)
        if not _is_int(seconds) or not 1 <= seconds <= MAX_IDENTIFY_S:
            raise InboundError("seconds", f"{json.dumps(seconds)} is not an integer "
                               f"1..{MAX_IDENTIFY_S}")
        return Command(op, subject, seconds)
    return Command(op, subject)


def peek_op(payload: bytes) -> str | None:
    try:
        op = json.loads(bytes(payload).decode("utf-8")).get("op")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return op if isinstance(op, str) and op in OPS else None


def response_topic_problem(topic_root: str, topic: str) -> str | None:
    """Why a request's Response Topic is not answered on (None: fine): wildcards, or a topic
    in the gateway's own tree, which only the gateway publishes."""
    if not topic or any(ch in topic for ch in "+#\0"):
        return "is empty or holds a wildcard"
    if topic == topic_root or topic.startswith(topic_root + "/"):
        return "lies under the gateway's own topic root"
    return None


def answer(ok: bool, op: str | None, detail: str | None) -> dict:
    return {"ok": ok, "op": op, "detail": detail}
