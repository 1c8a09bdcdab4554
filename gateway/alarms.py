"""The gateway's alarms: what an operator must know is wrong right now (sans-I/O).

An alarm is keyed by its kind and, where one kind can fire for several things, a source
(`model` + `uv_dose`, `task` + `ingest`). Raising an alarm that is already up with the same
detail changes nothing (no flapping, `since` stays); raising it with a new detail updates the
detail and keeps `since`. Clearing an alarm that is not up changes nothing. Every change is
handed to the listeners, which the service uses to log one line and republish the retained
`state` (docs/mqtt.md), whose `alarms` list is `Alarms.payload()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Alarm:
    kind: str
    source: str | None
    detail: str
    since_ms: int

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.kind, self.source)

    def to_payload(self) -> dict:
        payload: dict = {"kind": self.kind, "detail": self.detail, "since": self.since_ms}
        if self.source is not None:
            payload["source"] = self.source
        return payload

    def describe(self) -> str:
        where = self.kind if self.source is None else f"{self.kind} {self.source}"
        return f"{where}: {self.detail}"


@dataclass(frozen=True)
class AlarmChange:
    alarm: Alarm
    raised: bool   # False: cleared
    updated: bool = False   # an alarm already up, with a new detail


Listener = Callable[[AlarmChange], None]


class Alarms:
    def __init__(self) -> None:
        self._active: dict[tuple[str, str | None], Alarm] = {}
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def raise_(self, kind: str, detail: str, now_ms: int, source: str | None = None) -> bool:
        """Raise (or update the detail of) an alarm; True if anything changed."""
        key = (kind, source)
        old = self._active.get(key)
        if old is not None and old.detail == detail:
            return False
        alarm = Alarm(kind, source, detail, now_ms if old is None else old.since_ms)
        self._active[key] = alarm
        self._notify(AlarmChange(alarm, raised=True, updated=old is not None))
        return True

    def clear(self, kind: str, source: str | None = None) -> bool:
        """Clear an alarm; True if it was up."""
        alarm = self._active.pop((kind, source), None)
        if alarm is None:
            return False
        self._notify(AlarmChange(alarm, raised=False))
        return True

    def is_up(self, kind: str, source: str | None = None) -> bool:
        return (kind, source) in self._active

    def get(self, kind: str, source: str | None = None) -> Alarm | None:
        return self._active.get((kind, source))

    def active(self) -> list[Alarm]:
        return sorted(self._active.values(), key=lambda a: (a.since_ms, a.kind, a.source or ""))

    def payload(self) -> list[dict]:
        return [a.to_payload() for a in self.active()]

    def __len__(self) -> int:
        return len(self._active)

    def _notify(self, change: AlarmChange) -> None:
        for listener in self._listeners:
            listener(change)
