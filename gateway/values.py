"""Value types shared by the gateway's parts: what a session hands the store, what the
registry holds, and how a patch session ended.

Dependency-free on purpose (numpy only for sample columns): the sans-I/O cores (session,
twin engine, delivery policy) take their values from here, never from an adapter such as
gateway/store.py (SQLite), so they can be read and tested without one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RegisteredDevice:
    """A paired patch in the registry: its key, pseudonymous subject and configuration."""

    device_id: str
    key: bytes
    subject: str
    skin_type: int
    address: str | None
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DesiredConfig:
    """The latest accepted `{subject}/desired` for a device: version, SET_CONFIG key → seconds,
    and the version the patch last confirmed (None: not yet)."""

    ver: int
    cfg: dict[int, int]
    applied_ver: int | None = None
    applied_cfg: dict[int, int] = field(default_factory=dict)   # the config of applied_ver

    @property
    def applied(self) -> bool:
        return self.applied_ver == self.ver


@dataclass(frozen=True)
class LostSamples:
    """Samples a patch could not log (protocol.md §4.1): per-channel counts over a tick range
    of one boot, just before the sample `seq_at`. UTC is None where the time is not known."""

    boot_id: int
    seq_at: int
    first_tick: int
    last_tick: int
    first_utc_ms: int | None
    last_utc_ms: int | None
    counts: tuple[int, int, int, int]

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class SampleBatch:
    """Samples from one device, ready to commit (numpy columns of equal length), with the
    gaps the patch reported just before them: they commit (and are acknowledged) together."""

    device_id: str
    boot_id: int
    seq: np.ndarray
    tick: np.ndarray
    utc_ms: np.ndarray  # int64, -1 where the time is not known
    channel: np.ndarray
    value: np.ndarray
    historical: bool = False
    gaps: tuple[LostSamples, ...] = ()
    # utc_ms came from a clock anchor taken before a gateway wall-clock step (gateway/clock.py):
    # off by up to that step, one way or the other
    time_uncertain: bool = False

    def __len__(self) -> int:
        return int(self.seq.shape[0])


class CloseKind(enum.Enum):
    """Why a patch connection ended. Code branches on the kind (the retry policy in
    gateway/retry_policy.py); the detail string beside it is for humans only."""

    CONNECT_FAILED = "connect failed"        # never connected: out of range or gone
    MTU_TOO_SMALL = "MTU too small"          # below protocol minimum: firmware/adapter too old
    IDENTITY_MISMATCH = "identity mismatch"  # the patch is not the registered device
    BAD_STATUS = "unreadable status"         # its status record does not decode
    AUTH_FAILED = "auth failed"              # the patch refused our key (AUTH_FAILED)
    REQUEST_REFUSED = "request refused"      # the patch answered a request with another error
    PROTOCOL_ERROR = "protocol error"        # a malformed control point response
    BAD_RESPONSE_TAG = "bad response tag"    # a control point response failed its tag: forged,
                                             # altered or misdirected; nothing was acted on
    TIMEOUT = "timeout"                      # no answer to a control point request in time
    LINK_LOST = "link lost"                  # the BLE link dropped
    BLE_ERROR = "BLE error"                  # a BLE operation raised
    STORE_FAILED = "store failed"            # our store refused the samples (disk full)
    YIELDED = "yielded"                      # gave the connection slot to a waiting patch


@dataclass(frozen=True)
class SessionClose:
    """How a session ended: a kind to branch on, a detail for logs and operators."""

    kind: CloseKind
    detail: str
