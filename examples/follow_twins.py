"""Follow every subject's twin from a dermtwin gateway's broker (docs/subscribers.md).

    python examples/follow_twins.py mqtt://localhost:1883 gw1 [--seconds 30]

Prints a line per twin revision: the retained twins first, then each change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from gateway.subscriber import Subscriber


async def main(url: str, gateway_id: str, seconds: float | None) -> None:
    async with Subscriber(url, gateway_id=gateway_id) as sub:
        async def follow() -> None:
            async for twin in sub.twins():
                skin = twin.state.get("skin_temp_c", {}).get("v")
                med = twin.state.get("uv_med_fraction", {}).get("v")
                print(f"{twin.subject} rev {twin.rev}: skin {skin} °C, "
                      f"UV dose {med if med is None else round(100 * med)} % of MED", flush=True)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follow(), seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("broker")
    parser.add_argument("gateway_id")
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    asyncio.run(main(args.broker, args.gateway_id, args.seconds))
