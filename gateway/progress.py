"""Progress of a backlog drain (REPLAY until the patch's log is caught up): done, rate, ETA."""

from __future__ import annotations

from dataclasses import dataclass

MIN_ELAPSED_FOR_RATE_S = 0.1


@dataclass
class DrainProgress:
    first_seq: int      # the first seq the drain had to fetch
    target_seq: int     # the patch's next seq when the drain began
    started_s: float
    done_seq: int = -1  # the gateway now needs this seq next

    @property
    def total(self) -> int:
        return max(0, self.target_seq - self.first_seq)

    @property
    def done(self) -> int:
        return min(self.total, max(0, self.done_seq - self.first_seq))

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def rate(self, now_s: float) -> float | None:
        elapsed = now_s - self.started_s
        return self.done / elapsed if elapsed >= MIN_ELAPSED_FOR_RATE_S else None

    def eta_s(self, now_s: float) -> float | None:
        rate = self.rate(now_s)
        if not rate:
            return None
        return (self.total - self.done) / rate

    def describe(self, now_s: float) -> str:
        rate, eta = self.rate(now_s), self.eta_s(now_s)
        text = f"{self.done}/{self.total} samples"
        if rate is not None:
            text += f", {rate:,.0f} samples/s"
        if eta is not None and not self.finished:
            text += f", ETA {eta:.0f} s"
        return text
