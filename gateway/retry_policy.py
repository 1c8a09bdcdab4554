"""When to try a patch again after its connection ended: one rule per `CloseKind`.

Sans-I/O and chosen by kind only: rewording a close's detail text cannot move a patch
from one rule to another. Delays are jittered by the connection manager (x0.5..1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.values import CloseKind

MAX_BACKOFF_DOUBLINGS = 8


@dataclass(frozen=True)
class RetryRule:
    delay_s: float
    why: str
    max_delay_s: float | None = None   # set: doubles per consecutive failure, up to this


_TECHNICIAN = RetryRule(60.0, "wrong key, identity or firmware: a technician must act")
_TRANSIENT = RetryRule(0.5, "the patch was just there: come back quickly")

RETRY_BY_KIND: Mapping[CloseKind, RetryRule] = MappingProxyType({
    CloseKind.CONNECT_FAILED: RetryRule(1.0, "device out of range or gone", max_delay_s=30.0),
    CloseKind.MTU_TOO_SMALL: _TECHNICIAN,
    CloseKind.IDENTITY_MISMATCH: _TECHNICIAN,
    CloseKind.BAD_STATUS: _TECHNICIAN,
    CloseKind.AUTH_FAILED: _TECHNICIAN,
    CloseKind.REQUEST_REFUSED: _TECHNICIAN,
    CloseKind.PROTOCOL_ERROR: _TRANSIENT,
    CloseKind.TIMEOUT: _TRANSIENT,
    CloseKind.LINK_LOST: _TRANSIENT,
    CloseKind.BLE_ERROR: _TRANSIENT,
    CloseKind.STORE_FAILED: RetryRule(10.0, "our disk is full: the patch keeps its samples"),
    CloseKind.YIELDED: RetryRule(10.0, "gave its slot to a waiting patch: let that one drain"),
})
_missing = set(CloseKind) - set(RETRY_BY_KIND)
if _missing:   # a new kind must get a rule here, not fall through to a default
    raise RuntimeError(f"no retry rule for {sorted(k.name for k in _missing)}")


def retry_delay_s(kind: CloseKind, consecutive_failures: int = 1) -> float:
    """Seconds before the next attempt; `consecutive_failures` (>= 1) counts this kind in a
    row, for the rules that back off."""
    rule = RETRY_BY_KIND[kind]
    if rule.max_delay_s is None:
        return rule.delay_s
    doublings = min(max(consecutive_failures, 1) - 1, MAX_BACKOFF_DOUBLINGS)
    return min(rule.max_delay_s, rule.delay_s * 2 ** doublings)
