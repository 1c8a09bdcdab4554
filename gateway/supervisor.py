"""Supervision of the gateway's long-lived asyncio tasks.

A task that raises is logged (with its traceback the first time a failure of that kind is
seen, one line after that), raises a `task` alarm naming it, and is restarted after an
exponential backoff. Once a restarted task has run for `healthy_after_s` the alarm clears and
the backoff resets. A task that keeps failing without ever running that long, or raises
`Unrecoverable`, ends the gateway with a clear message (exit non-zero: a service manager
restarts it), never a silent stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.alarms import Alarms
from gateway.clock import now_ms

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 60.0)   # first delay, cap; doubles per consecutive failure
HEALTHY_AFTER_S = 30.0            # running this long after a restart counts as recovered
GIVE_UP_AFTER_FAILURES = 10       # in a row, none of them after a healthy run


class Unrecoverable(RuntimeError):
    """A failure no restart of the task can cure: the gateway stops and exits non-zero."""


@dataclass
class SupervisorPolicy:
    backoff_s: tuple[float, float] = RESTART_BACKOFF_S
    healthy_after_s: float = HEALTHY_AFTER_S
    give_up_after: int = GIVE_UP_AFTER_FAILURES


def _signature(error: BaseException | None) -> str:
    return "returned" if error is None else f"{type(error).__name__}: {error}"


async def supervise(name: str, run: Callable[[], Awaitable[None]], alarms: Alarms,
                    policy: SupervisorPolicy | None = None,
                    fatal: tuple[type[BaseException], ...] = ()) -> None:
    """Run `run()` for ever: restart it with backoff when it fails or returns. `Unrecoverable`
    and the `fatal` exception types are not restarted: they propagate."""
    policy = policy or SupervisorPolicy()
    propagate: tuple[type[BaseException], ...] = (Unrecoverable, *fatal)
    failures = 0
    seen: set[str] = set()
    while True:
        started = time.monotonic()
        task = asyncio.ensure_future(run())
        try:
            if alarms.is_up("task", name):
                done, _ = await asyncio.wait({task}, timeout=policy.healthy_after_s)
                if not done:
                    failures = 0
                    alarms.clear("task", name)
                    log.warning("task %s: running again for %.0f s after its restart",
                                name, policy.healthy_after_s)
            await task
            error: BaseException | None = None
        except asyncio.CancelledError:
            task.cancel()
            raise
        except propagate:
            raise
        except Exception as e:   # a bug or an unforeseen condition: logged, alarmed, restarted
            error = e
        if time.monotonic() - started >= policy.healthy_after_s:
            failures = 0
        failures += 1
        signature = _signature(error)
        if failures >= policy.give_up_after:
            alarms.raise_("task", f"gave up after {failures} failures in a row: {signature}",
                          now_ms(), name)
            raise Unrecoverable(f"task {name} failed {failures} times in a row without "
                                f"recovering (last: {signature}); exiting") from error
        low, high = policy.backoff_s
        delay_s = min(high, low * 2 ** (failures - 1))
        message = (f"task {name} {'ended' if error is None else 'failed'} ({signature}); "
                   f"restart {failures} in {delay_s:.1f} s")
        if signature in seen:
            log.error("%s", message)
        else:   # the traceback once per kind of failure, not on every restart
            seen.add(signature)
            log.error("%s", message, exc_info=error)
        alarms.raise_("task", f"{signature} (restart {failures})", now_ms(), name)
        await asyncio.sleep(delay_s)
