"""Run an ordinary MicroPython aioble program file, unmodified, on a Bumble device.

What MicroPython provides and CPython lacks is supplied around the program, not in it: the
device shims on sys.path (`aioble`, `bluetooth`, `micropython`), asyncio's `sleep_ms` and
`ThreadSafeFlag`, aioble bound to the given Bumble device, and MicroPython's single event
loop: the program's `asyncio.run(main())` runs `main()` on `loop`, the loop that drives the
Bumble device, until `main()` ends or `until` (a task on the same loop) finishes, whichever
is first; then the program is cancelled.
"""

from __future__ import annotations

import asyncio
import contextvars
import runpy
from pathlib import Path
from typing import Any

from simulation.device_shims import install


def run_program(path: Path, device: Any, loop: asyncio.AbstractEventLoop,
                until: asyncio.Future[Any] | None = None) -> dict[str, Any]:
    """Execute `path` as `__main__`; return its globals. Call outside the running loop."""
    install()
    import aioble  # the host shim (install() put it first on sys.path)

    context = contextvars.copy_context()
    context.run(aioble.bind_device, device)
    real_run = asyncio.run

    def micropython_run(main: Any) -> Any:
        program = loop.create_task(main)   # in the context run_path runs in: aioble bound
        waits: list[asyncio.Future[Any]] = [program] + ([until] if until is not None else [])
        loop.run_until_complete(asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED))
        if not program.done():   # `until` came first: end the program (its own way)
            program.cancel()
            loop.run_until_complete(asyncio.gather(program, return_exceptions=True))
            return None
        return program.result()   # it ended by itself: its result or its exception

    asyncio.run = micropython_run  # type: ignore[assignment]
    try:
        return context.run(runpy.run_path, str(path), run_name="__main__")
    finally:
        asyncio.run = real_run
