"""The MQTT topic table (design.md §5, docs/mqtt.md): every topic the gateway publishes or
serves, with its direction, retain flag, message expiry, QoS and payload schema.

The publishing side (ingest, service, remote requests), the inbound handler
(gateway/mqtt/inbound.py), the subscriber library and docs/mqtt.md's table all derive from
this one table; a new topic is one row here plus the code that fills its payload.
Dependency-free on purpose: subscribers import it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TOPIC_PREFIX = "dermtwin/v1"
SCHEMA_VERSION = 3            # payload schema version, named in `meta` (docs/schemas/)
SUBJECT = "{subject}"
DAY_S = 86_400
SCHEMA_ID_BASE = "urn:dermtwin:schemas:v3:"  # + name: each schema's $id


@dataclass(frozen=True)
class Topic:
    """One row of the table. `name` is the topic below `dermtwin/v1/{gw}/`, with
    `{subject}` as its first level for per-subject topics."""

    name: str
    direction: Literal["out", "in"]   # out: the gateway publishes; in: the gateway serves
    retained: bool
    expiry_s: int | None              # MQTT 5 Message Expiry Interval; None: never expires
    qos: int
    schema: str                       # docs/schemas/{schema}.schema.json
    summary: str                      # docs/mqtt.md's payload column

    @property
    def per_subject(self) -> bool:
        return self.name.startswith(SUBJECT + "/")

    @property
    def leaf(self) -> str:
        """The last topic level (`twin`, `state`, ...)."""
        return self.name.rsplit("/", 1)[-1]

    def path(self, root: str, subject: str | None = None) -> str:
        """The concrete topic under `root` (`dermtwin/v1/{gw}`)."""
        if self.per_subject:
            if not subject or any(ch in subject for ch in "/+#\0"):
                raise ValueError(f"subject {subject!r}: must be one topic level "
                                 f"(non-empty, without '/', '+', '#' or NUL)")
            return f"{root}/{subject}/{self.leaf}"
        if subject is not None:
            raise ValueError(f"topic {self.name!r} takes no subject")
        return f"{root}/{self.name}"

    def filter(self, root: str) -> str:
        """The subscription filter for this topic of every subject under `root`."""
        return f"{root}/+/{self.leaf}" if self.per_subject else f"{root}/{self.name}"

    def match(self, root: str, topic: str) -> str | None:
        """The subject of `topic` if it is this topic under `root` ('' for a topic without a
        subject), else None."""
        prefix = root + "/"
        if not topic.startswith(prefix):
            return None
        levels = topic[len(prefix):].split("/")
        if self.per_subject:
            if len(levels) == 2 and levels[0] and levels[1] == self.leaf:
                return levels[0]
            return None
        return "" if levels == self.name.split("/") else None


STATE = Topic("state", "out", True, None, 1, "state",
              "`{\"online\": true, \"sess\": 3, \"ts\": 1764262800000, \"alarms\": [...], "
              "\"alarm\": {...}, \"outbox\": {\"depth\": n, \"parked\": n}, "
              "\"disk_free_bytes\": n}`; also the Will (`online: false`, Will Delay 10 s) and "
              "published on a clean stop. Published directly, not through the outbox: on every "
              "alarm raised or cleared, and when outbox depth, parked rows or free disk change "
              "(checked every 10 s). `alarms` lists what is wrong now (below); `alarm` repeats "
              "the oldest of them and is absent when none is up")
CMD = Topic("cmd", "in", False, None, 1, "cmd",
            "requests `{\"op\": \"identify\" \\| \"resync\" \\| \"reset_config\", …}` with "
            "MQTT 5 Response Topic + "
            "Correlation Data; answers (schema `cmd-answer`) on the Response Topic (below)")
META = Topic("{subject}/meta", "out", True, 30 * DAY_S, 1, "meta",
             "`{\"schema\", \"units\": {prop: UCUM}, \"models\": {name: {\"version\"}}, "
             "\"channels\": [...], \"samples\": {\"properties\", \"scale\"}, "
             "\"device\": {\"name\"}}`")
TWIN = Topic("{subject}/twin", "out", True, 7 * DAY_S, 1, "twin",
             "`{\"schema\", \"sess\", \"rev\", \"ts\", \"state\": {prop: [v, age, q?]}}` "
             "(a leaf below), republished with every delta (same `rev`)")
DELTA = Topic("{subject}/delta", "out", False, None, 1, "delta",
              "`{\"schema\", \"sess\", \"rev\", \"ts\", \"set\": {prop: [v, age, q?]}[, "
              "\"unset\": [prop]]}`: the properties that moved beyond their deadband")
SAMPLES = Topic("{subject}/samples", "out", False, None, 1, "samples",
                "raw samples, columnar: `{\"schema\", \"boot\", \"seq\", \"t\", \"tu\", \"c\", "
                "\"dt\", \"v\"[, \"skip\", \"hist\", \"time_uncertain\"]}` (below); with "
                "`run --samples-format zlib` compressed, Content Type `application/zlib`")
ALERT = Topic("{subject}/alert", "out", False, None, 1, "alert",
              "`{\"schema\", \"ts\", \"kind\": \"inflammation\" \\| \"uv_forecast\" \\| "
              "\"uv_dose\" \\| \"patch_loose\" \\| \"drying\" \\| \"battery_low\", "
              "\"active\": bool, …}`, or a `data_loss` event (below)")
DESIRED = Topic("{subject}/desired", "in", True, None, 1, "desired",
                "from the clinic: `{\"ver\": n, \"cfg\": {key: seconds}}` (below); the gateway "
                "subscribes `{gw}/+/desired`")
REPORTED = Topic("{subject}/reported", "out", True, 30 * DAY_S, 1, "reported",
                 "the answer to `desired`: `{\"schema\", \"ver\", \"state\": \"pending\" \\| "
                 "\"applied\" \\| \"refused\", \"detail\", \"ts\", \"cfg\"}`")

TOPICS: tuple[Topic, ...] = (STATE, CMD, META, TWIN, DELTA, SAMPLES, ALERT, DESIRED, REPORTED)
BY_NAME = {t.name: t for t in TOPICS}
INBOUND = tuple(t for t in TOPICS if t.direction == "in")
# Payloads that travel outside the gateway's tree: answers to `cmd` on the requester's topic.
CMD_ANSWER_SCHEMA = "cmd-answer"
SCHEMAS = tuple(t.schema for t in TOPICS) + (CMD_ANSWER_SCHEMA,)


def root(gateway_id: str) -> str:
    return f"{TOPIC_PREFIX}/{gateway_id}"


def classify(root: str, topic: str) -> tuple[Topic, str | None] | None:
    """The table row of `topic` under `root` and its subject (None for a topic without one),
    or None if `topic` is none of them."""
    for row in TOPICS:
        subject = row.match(root, topic)
        if subject is not None:
            return row, (subject or None)
    return None


def markdown_table() -> str:
    """docs/mqtt.md's topic table (tests/test_topics.py keeps the two equal)."""
    lines = ["| topic | direction | retained | expiry | QoS | schema | payload |",
             "|---|---|---|---|---|---|---|"]
    for t in TOPICS:
        expiry = "—" if t.expiry_s is None else f"{t.expiry_s // DAY_S} d"
        direction = "gateway → subscribers" if t.direction == "out" else "clients → gateway"
        lines.append(f"| `{t.name}` | {direction} | {'yes' if t.retained else 'no'} | "
                     f"{expiry} | {t.qos} | [`{t.schema}`](schemas/{t.schema}.schema.json) | "
                     f"{t.summary} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
