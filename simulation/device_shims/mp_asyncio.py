"""MicroPython's asyncio extras for CPython hosts: `asyncio.sleep_ms` and
`asyncio.ThreadSafeFlag`, as firmware and aioble use them (`install()` adds them to CPython's
asyncio module when missing; nothing else of asyncio changes)."""

from __future__ import annotations

import asyncio
import threading


async def sleep_ms(ms: float) -> None:
    """asyncio.sleep_ms(ms): sleep for ms milliseconds (MicroPython)."""
    await asyncio.sleep(ms / 1000)


class ThreadSafeFlag:
    """asyncio.ThreadSafeFlag (MicroPython): `set()` from anywhere (an IRQ handler on a board,
    another thread here); one task `await wait()`s, which returns once the flag is set and
    clears it. A `set()` before the `wait()` is remembered."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> None:
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                pass

    def set(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running() and threading.get_ident() != _loop_thread(loop):
            loop.call_soon_threadsafe(self._event.set)
        else:
            self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self) -> None:
        self._bind()
        await self._event.wait()
        self._event.clear()


def _loop_thread(loop: asyncio.AbstractEventLoop) -> int | None:
    return getattr(loop, "_thread_id", None)


def install() -> None:
    if not hasattr(asyncio, "sleep_ms"):
        asyncio.sleep_ms = sleep_ms  # type: ignore[attr-defined]
    if not hasattr(asyncio, "ThreadSafeFlag"):
        asyncio.ThreadSafeFlag = ThreadSafeFlag  # type: ignore[attr-defined]
