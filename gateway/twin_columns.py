"""Every subject's twin properties as columns (sans-I/O): what this step would set, what the
twin holds, and which of them moved beyond their deadband, for all subjects at once.

The twin engine (gateway/twin.py) keeps one slot per subject; a property's pending values,
times and qualities are rows of arrays indexed by slot, and so is a mirror of the current
state's values, so that a step compares every subject's every property in a few numpy
operations instead of a dict per leaf. Leaves (`{"v", "t", "q"}`) are built only for what
changed. The comparison is exactly the per-leaf one it replaced:

    q differs, or (both values floats and |new - old| >= deadband), or (else) new != old

Values are coded per cell as a kind (float, bool, None, text, or "other" for anything a saved
twin of an older version may hold, compared in Python) and a float64.
"""

from __future__ import annotations

import numpy as np

from gateway.model_registry import CHANNEL_SCALE, PROPERTIES

PROPS: tuple[str, ...] = tuple(PROPERTIES)
PROP_INDEX: dict[str, int] = {p: i for i, p in enumerate(PROPS)}
DEADBANDS = np.array([PROPERTIES[p].deadband for p in PROPS], dtype=np.float64)

FROM_CHANNEL = np.array([p in {prop for _, prop in CHANNEL_SCALE.values()} for p in PROPS])
_AFTER_CHANNELS = 2 ** 62 - 2 ** 10

NONE, FLOAT, BOOL, NULL, TEXT, OTHER, BAD_COPY = -1, 0, 1, 2, 3, 4, 5
ROUND_DIGITS = 3
_SCALE = 10.0 ** ROUND_DIGITS


def round_leaf_values(x: np.ndarray) -> np.ndarray:
    """float64 values as Python's `round(float(v), 3)` gives them, bit for bit.

    rint(x * 1000) / 1000 is that value except where x * 1000 lies within rounding error of
    a half (the product's rounding may cross it; Python rounds the exact binary value, half
    to even): those few go through `round` itself."""
    x = np.asarray(x, dtype=np.float64)
    scaled = x * _SCALE
    out = np.rint(scaled) / _SCALE
    with np.errstate(invalid="ignore"):            # inf - inf: left to `round`
        frac = scaled - np.floor(scaled)
    doubtful = (np.abs(frac - 0.5) < 1e-6) | ~(np.abs(scaled) < 2.0 ** 50)
    if doubtful.any():
        for i in doubtful.nonzero()[0].tolist():
            out[i] = round(float(x[i]), ROUND_DIGITS)
    return out


class PropertyColumns:
    """Pending and current values of every property, one column per subject slot."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = 0
        self.q_codes: dict[object, int] = {"good": 0, "uncertain": 1, "bad": 2}
        self.q_names: list[object] = ["good", "uncertain", "bad"]
        self.text_codes: dict[str, int] = {}
        self.texts: list[str] = []
        n = len(PROPS)
        self.pend_kind = np.full((n, 0), NONE, dtype=np.int8)
        self.pend_v = np.zeros((n, 0), dtype=np.float64)
        self.pend_t = np.zeros((n, 0), dtype=np.int64)
        self.pend_q = np.zeros((n, 0), dtype=np.int16)
        # A raw channel's leaf: where its first sample came in the step (a twin lists its
        # properties in the order they first arrived, then the models' in table order).
        self.pend_first = np.zeros((n, 0), dtype=np.int64)
        self.state_kind = np.full((n, 0), NONE, dtype=np.int8)
        self.state_v = np.zeros((n, 0), dtype=np.float64)
        self.state_q = np.zeros((n, 0), dtype=np.int16)
        self.any_pending = False
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        capacity = max(capacity, 2 * self.capacity)

        def wider(a: np.ndarray, fill: int) -> np.ndarray:
            b = np.full((a.shape[0], capacity), fill, dtype=a.dtype)
            b[:, :a.shape[1]] = a
            return b

        self.pend_kind = wider(self.pend_kind, NONE)
        self.pend_v, self.pend_t = wider(self.pend_v, 0), wider(self.pend_t, 0)
        self.pend_q, self.pend_first = wider(self.pend_q, 0), wider(self.pend_first, 0)
        self.state_kind = wider(self.state_kind, NONE)
        self.state_v, self.state_q = wider(self.state_v, 0), wider(self.state_q, 0)
        self.capacity = capacity

    def q_code(self, q: object) -> int:
        code = self.q_codes.get(q)
        if code is None:
            code = self.q_codes[q] = len(self.q_names)
            self.q_names.append(q)
        return code

    def text_code(self, text: str) -> int:
        code = self.text_codes.get(text)
        if code is None:
            code = self.text_codes[text] = len(self.texts)
            self.texts.append(text)
        return code

    def _code(self, v: object) -> tuple[int, float]:
        if isinstance(v, float):
            return FLOAT, v
        if isinstance(v, bool | int) and -2 ** 53 <= v <= 2 ** 53:
            return BOOL, float(v)
        if v is None:
            return NULL, 0.0
        if isinstance(v, str):
            return TEXT, float(self.text_code(v))
        return OTHER, 0.0

    # -- pending --------------------------------------------------------------------
    def set_floats(self, prop: int | np.ndarray, slots: np.ndarray, values: np.ndarray,
                   t: np.ndarray, q: np.ndarray | int, rounded_now: bool = False,
                   first: np.ndarray | None = None) -> None:
        """Leaves of floats, rounded as leaves are: now, or with every other pending float
        when the step takes what changed (one rounding pass for all of them)."""
        self.pend_kind[prop, slots] = FLOAT
        self.pend_v[prop, slots] = round_leaf_values(values) if rounded_now else values
        if first is not None:
            self.pend_first[prop, slots] = first
        self.pend_t[prop, slots] = t
        self.pend_q[prop, slots] = q
        self.any_pending = True

    def set_coded(self, prop: int, slots: np.ndarray, kind: int, codes: np.ndarray,
                  t: np.ndarray, q: np.ndarray | int) -> None:
        """Leaves of booleans (codes 0/1) or texts (codes from text_code)."""
        self.pend_kind[prop, slots] = kind
        self.pend_v[prop, slots] = codes
        self.pend_t[prop, slots] = t
        self.pend_q[prop, slots] = q
        self.any_pending = True

    def set_one(self, prop: int, slot: int, value: object, t: int, q: str) -> None:
        """One leaf from Python; a float must be rounded already."""
        kind, v = self._code(value)
        self.pend_kind[prop, slot] = kind
        self.pend_v[prop, slot] = v
        self.pend_t[prop, slot] = t
        self.pend_q[prop, slot] = self.q_code(q)
        self.any_pending = True

    def mark_bad(self, props: list[int], n: int) -> None:
        """Every current leaf of these properties not yet "bad" becomes a pending "bad" copy."""
        bad = self.q_codes["bad"]
        for p in props:
            cells = ((self.state_kind[p, :n] != NONE) & (self.state_q[p, :n] != bad)
                     & (self.pend_kind[p, :n] == NONE)).nonzero()[0]
            if len(cells):
                self.pend_kind[p, cells] = BAD_COPY
                self.pend_q[p, cells] = bad
                self.any_pending = True

    # -- the step's outcome -----------------------------------------------------------
    def take_changed(self, n: int, states: list[dict]) -> list[tuple[int, dict[str, dict]]]:
        """Every slot with a pending leaf that differs from its current one, with those
        leaves by property (in table order); they become the mirrored current state and
        nothing is pending after. `states[slot]` is that subject's state (for "bad" copies
        of its leaves, and the rare cell an older saved twin holds as something else)."""
        if not self.any_pending:
            return []
        # Only the pending cells, by slot then property, as flat arrays.
        slots, props = (self.pend_kind[:, :n].T != NONE).nonzero()
        pk, pv, pq = (self.pend_kind[props, slots], self.pend_v[props, slots],
                      self.pend_q[props, slots])
        sk, sv, sq = (self.state_kind[props, slots], self.state_v[props, slots],
                      self.state_q[props, slots])
        floats = pk == FLOAT
        if floats.all():
            pv = round_leaf_values(pv)
        else:
            pv[floats] = round_leaf_values(pv[floats])   # rounding a rounded value keeps it
        both_float = floats & (sk == FLOAT)
        with np.errstate(invalid="ignore"):
            changed = np.abs(pv - sv) >= DEADBANDS[props]
        if not both_float.all():
            numeric = (pk <= BOOL) & (sk >= FLOAT) & (sk <= BOOL)
            equal = ((numeric & (pv == sv)) | ((pk == NULL) & (sk == NULL))
                     | ((pk == TEXT) & (sk == TEXT) & (pv == sv)))
            changed = np.where(both_float, changed, ~equal)
        changed |= (sk == NONE) | (pq != sq) | (pk == BAD_COPY)
        other = (sk == OTHER) & ~changed
        if other.any():
            for i in other.nonzero()[0].tolist():
                s, p = int(slots[i]), int(props[i])
                old = states[s][PROPS[p]]
                new = self._leaf(int(pk[i]), float(pv[i]), int(self.pend_t[p, s]),
                                 int(pq[i]), old)
                changed[i] = old.get("q") != new["q"] or old["v"] != new["v"]
        self.pend_kind[:, :n] = NONE
        self.any_pending = False
        if not changed.any():
            return []
        slots, props, kinds = slots[changed], props[changed], pk[changed]
        values, qs = pv[changed], pq[changed]
        arrival = np.where(FROM_CHANNEL[props], self.pend_first[props, slots],
                           _AFTER_CHANNELS + props)
        order = np.lexsort((arrival, slots))
        slots, props, kinds, values, qs = (slots[order], props[order], kinds[order],
                                           values[order], qs[order])
        times = self.pend_t[props, slots]
        out: list[tuple[int, dict[str, dict]]] = []
        leaf = self._leaf
        current: dict[str, dict] = {}
        last = -1
        for s, p, kind, v, t, q in zip(slots.tolist(), props.tolist(), kinds.tolist(),
                                       values.tolist(), times.tolist(), qs.tolist(),
                                       strict=True):
            if s != last:
                current = {}
                out.append((s, current))
                last = s
            prop = PROPS[p]
            current[prop] = leaf(kind, v, t, q, states[s].get(prop))
        copied = kinds == BAD_COPY
        if copied.any():
            kinds = np.where(copied, sk[changed][order], kinds)
            values = np.where(copied, sv[changed][order], values)
        self.state_kind[props, slots] = kinds
        self.state_v[props, slots] = values
        self.state_q[props, slots] = qs
        return out

    def _leaf(self, kind: int, v: float, t: int, q: int, old: dict | None) -> dict:
        if kind == FLOAT:
            return {"v": v, "t": t, "q": self.q_names[q]}
        if kind == BOOL:
            return {"v": v != 0.0, "t": t, "q": self.q_names[q]}
        if kind == NULL:
            return {"v": None, "t": t, "q": self.q_names[q]}
        if kind == TEXT:
            return {"v": self.texts[int(v)], "t": t, "q": self.q_names[q]}
        assert kind == BAD_COPY and old is not None
        return {**old, "q": "bad"}

    def load(self, slot: int, state: dict) -> None:
        """Mirror a subject's current state (at start, from a saved twin)."""
        for prop, leaf in state.items():
            p = PROP_INDEX.get(prop)
            if p is not None:
                self.take(p, slot, leaf)

    def take(self, p: int, slot: int, leaf: object) -> None:
        if isinstance(leaf, dict) and "v" in leaf:
            kind, v = self._code(leaf["v"])
            q = self.q_code(leaf.get("q"))
        else:
            kind, v, q = OTHER, 0.0, self.q_code(None)
        self.state_kind[p, slot] = kind
        self.state_v[p, slot] = v
        self.state_q[p, slot] = q
