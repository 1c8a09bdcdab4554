"""The bridge section of `dermtwin broker-config`: the Pi's local mosquitto forwards the
gateway's tree to a central broker and brings the clinic's `desired` and `cmd` back
(docs/scale-out.md).

Secure by default: TLS to the central broker (its CA is required, the host name is
checked) and the bridge authenticates there, with a client certificate (the central
broker's `use_identity_as_username`) or with the account's password. Everything crosses
at QoS 1 with the retain flag kept; the central broker keeps the bridge's session
(`cleansession false`) and the local broker queues what the central broker has not yet
acknowledged, also across its own restarts (persistence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

BRIDGE_QOS = 1
# What the local broker holds for a central broker that is away, per client (the bridge is
# one). A live patch makes ~2 messages/s (samples + delta + twin per ingest cycle), so a
# gateway of 5 patches fills 500,000 in about 14 hours; a backlog drain far faster.
DEFAULT_QUEUE_MESSAGES = 500_000
DEFAULT_QUEUE_BYTES = 256 * 1024 * 1024
# How often the local broker writes its queue to disk: a crash or power cut of the Pi loses
# at most this much of the bridge's queue (the gateway's outbox already counts it delivered).
AUTOSAVE_INTERVAL_S = 60
# mosquitto's "decorrelated jitter" between reconnection attempts: base and cap.
DEFAULT_RESTART_S = (2, 30)
KEEPALIVE_S = 30


class BridgeConfigError(ValueError):
    """A bridge option is invalid; the message names it."""


@dataclass(frozen=True)
class Bridge:
    """How the local broker reaches the central one. `password` is written into the
    (0600) mosquitto.conf: mosquitto has no password file for bridges."""

    address: tuple[str, int]
    ca_file: Path
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str | None = None          # on the central broker; default per gateway
    restart_s: tuple[int, int] = DEFAULT_RESTART_S
    queue_messages: int = DEFAULT_QUEUE_MESSAGES
    queue_bytes: int = DEFAULT_QUEUE_BYTES

    def __post_init__(self) -> None:
        if not Path(self.ca_file).is_file():
            raise BridgeConfigError(f"--bridge-ca {str(self.ca_file)!r}: no such file")
        if (self.cert_file is None) != (self.key_file is None):
            raise BridgeConfigError("--bridge-cert, --bridge-key: give both or neither")
        for name, path in (("--bridge-cert", self.cert_file), ("--bridge-key", self.key_file)):
            if path is not None and not Path(path).is_file():
                raise BridgeConfigError(f"{name} {str(path)!r}: no such file")
        if self.cert_file is None and self.password is None:
            raise BridgeConfigError(
                "--bridge-to: the bridge must authenticate to the central broker: give "
                "--bridge-cert and --bridge-key, or --bridge-password-file")
        if self.password is not None and not self.username:
            raise BridgeConfigError("--bridge-password-file: needs --bridge-username")
        if self.password is not None and ("\n" in self.password or not self.password):
            raise BridgeConfigError("--bridge-password-file: must hold one non-empty line")
        base, cap = self.restart_s
        if not 1 <= base <= cap:
            raise BridgeConfigError(f"bridge restart {self.restart_s}: need 1 <= base <= cap")
        if self.queue_messages < 1:
            raise BridgeConfigError("--bridge-queue-messages: must be at least 1")


def read_bridge_password(path: Path) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise BridgeConfigError(
            f"--bridge-password-file {str(path)!r}: cannot read it ({e.strerror})") from None
    if not lines or not lines[0].strip():
        raise BridgeConfigError(f"--bridge-password-file {str(path)!r}: is empty")
    return lines[0].strip()


def bridge_topics(trees: list[tuple[str, str]]) -> list[str]:
    """`topic` lines for each gateway's (tree, reply tree): the tree and the `cmd` answers
    out, `desired` and `cmd` in; QoS 1 both ways."""
    lines = []
    for tree, replies in trees:
        lines += [f"topic {tree}/# out {BRIDGE_QOS}",
                  f"topic {replies}/# out {BRIDGE_QOS}",
                  f"topic {tree}/+/desired in {BRIDGE_QOS}",
                  f"topic {tree}/cmd in {BRIDGE_QOS}"]
    return lines


def queue_lines(bridge: Bridge) -> list[str]:
    """Global settings the bridge needs: a queue big enough for an outage, saved to disk."""
    return [f"max_queued_messages {bridge.queue_messages}",
            f"max_queued_bytes {bridge.queue_bytes}",
            f"autosave_interval {AUTOSAVE_INTERVAL_S}"]


def bridge_section(bridge: Bridge, gateways: list[str],
                   trees: list[tuple[str, str]]) -> list[str]:
    """mosquitto.conf lines of the bridge; `trees`: each gateway's (tree, reply tree)."""
    host, port = bridge.address
    client_id = bridge.client_id or f"dermtwin-bridge-{gateways[0]}"
    lines = ["# Bridge to the central broker (docs/scale-out.md): the gateways' trees out, "
             "desired and cmd in.",
             f"connection {client_id}",
             f"address {host}:{port}",
             "bridge_protocol_version mqttv50",
             f"remote_clientid {client_id}",
             f"local_clientid {client_id}-local",
             "# The central broker keeps the bridge's subscriptions and unacknowledged "
             "messages;",
             "# the local broker keeps what is queued for the central one.",
             "cleansession false",
             "local_cleansession false",
             "try_private true",
             "start_type automatic",
             f"restart_timeout {bridge.restart_s[0]} {bridge.restart_s[1]}",
             f"keepalive_interval {KEEPALIVE_S}",
             "# Connection state (1/0, retained) on the local broker only, at "
             f"$SYS/broker/connection/{client_id}/state",
             "notifications true",
             "notifications_local_only true",
             f"bridge_cafile {Path(bridge.ca_file).resolve()}",
             "bridge_insecure false"]
    if bridge.cert_file is not None and bridge.key_file is not None:
        lines += [f"bridge_certfile {Path(bridge.cert_file).resolve()}",
                  f"bridge_keyfile {Path(bridge.key_file).resolve()}"]
    if bridge.username:
        lines.append(f"remote_username {bridge.username}")
    if bridge.password is not None:
        lines.append(f"remote_password {bridge.password}")
    return lines + bridge_topics(trees)
