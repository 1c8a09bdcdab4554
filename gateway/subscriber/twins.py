"""Rebuild per-subject twins from `{subject}/twin` and `{subject}/delta` (sans-I/O).

The algorithm of docs/subscribers.md: the gateway republishes the retained twin with every
delta, carrying the same `rev`. So a subscriber takes the newest twin it sees (retained on
subscribe, or live), applies deltas whose `rev` is exactly one more, drops what it already
has (`rev <= last`), and holds deltas past a hole until a twin or the missing delta closes
it. Nothing needs to be sent; `overdue()` names the subjects whose hole stayed open longer
than a grace period, for a `cmd resync` (the library does it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from gateway import twin_message


@dataclass(frozen=True)
class Twin:
    """A subject's twin at `rev`: `state` is `{property: {"v", "t", "q"}}`, decoded from the
    wire's `[v, age, q]` (gateway/twin_message.py): `t` in UTC ms (-1: unknown), `q` one of
    good, uncertain, bad."""

    subject: str
    rev: int
    sess: int
    ts: int
    state: dict[str, dict]


@dataclass
class _Followed:
    rev: int | None = None
    sess: int = 0
    ts: int = 0
    state: dict[str, dict] = field(default_factory=dict)
    held: dict[int, dict] = field(default_factory=dict)   # deltas past a hole, by rev
    hole_since_s: float | None = None


class TwinFollower:
    """Feed it every twin and delta payload (any order, duplicates welcome); it returns the
    twins that moved. Counters say what it dropped and repaired."""

    def __init__(self) -> None:
        self._subjects: dict[str, _Followed] = {}
        self.duplicates = 0        # deltas or twins at or below the rev already held
        self.holes_closed = 0      # holes closed by a later twin or the missing delta

    def twin(self, subject: str) -> Twin | None:
        followed = self._subjects.get(subject)
        if followed is None or followed.rev is None:
            return None
        return Twin(subject, followed.rev, followed.sess, followed.ts,
                    copy.deepcopy(followed.state))

    @property
    def subjects(self) -> list[str]:
        return sorted(s for s, f in self._subjects.items() if f.rev is not None)

    def on_twin(self, subject: str, doc: dict, now_s: float = 0.0) -> Twin | None:
        """A twin snapshot (retained or live). Returns the new twin if it moved."""
        followed = self._subjects.setdefault(subject, _Followed())
        rev = int(doc["rev"])
        if followed.rev is not None and rev <= followed.rev:
            self.duplicates += 1
            return None
        followed.rev, followed.sess, followed.ts = rev, doc.get("sess", 0), doc.get("ts", 0)
        followed.state = twin_message.leaves(doc["state"], int(doc.get("ts", 0)))
        self._apply_held(followed, now_s)
        return self.twin(subject)

    def on_delta(self, subject: str, doc: dict, now_s: float = 0.0) -> Twin | None:
        """A delta. Returns the new twin if it moved (it may also close a hole)."""
        followed = self._subjects.setdefault(subject, _Followed())
        rev = int(doc["rev"])
        if followed.rev is not None and rev <= followed.rev:
            self.duplicates += 1
            return None
        if rev in followed.held:
            self.duplicates += 1
            return None
        followed.held[rev] = doc
        if followed.rev is None:
            # Nothing to apply it to yet: the retained twin is on its way (it is published
            # with every delta), unless this subject has no twin at all.
            if followed.hole_since_s is None:
                followed.hole_since_s = now_s
            return None
        before = followed.rev
        self._apply_held(followed, now_s)
        return self.twin(subject) if followed.rev != before else None

    def _apply_held(self, followed: _Followed, now_s: float) -> None:
        had_hole = followed.hole_since_s is not None
        assert followed.rev is not None
        for rev in sorted(followed.held):
            if rev <= followed.rev:
                del followed.held[rev]
            elif rev == followed.rev + 1:
                doc = followed.held.pop(rev)
                followed.state.update(twin_message.leaves(doc.get("set", {}), int(doc.get("ts", 0))))
                for prop in doc.get("unset", []):
                    followed.state.pop(prop, None)
                followed.rev, followed.sess, followed.ts = rev, doc.get("sess", 0), doc.get("ts", 0)
            else:
                break
        if followed.held:
            if followed.hole_since_s is None:
                followed.hole_since_s = now_s
        else:
            followed.hole_since_s = None
            if had_hole:
                self.holes_closed += 1

    def overdue(self, now_s: float, grace_s: float) -> list[str]:
        """Subjects with a hole (or deltas and no twin) open for longer than `grace_s`: ask
        the gateway for a snapshot (`cmd resync`)."""
        return sorted(s for s, f in self._subjects.items()
                      if f.hole_since_s is not None and now_s - f.hole_since_s > grace_s)
