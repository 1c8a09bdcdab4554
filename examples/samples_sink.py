"""A research sink: every raw sample once, into CSV, as one member of a consumer group.

    python examples/samples_sink.py mqtt://localhost:1883 gw1 out.csv [--group sink]

Run it several times with the same --group and the broker (MQTT 5 shared subscription)
spreads the samples messages across the members; key your store on (subject, boot, seq) so
a message delivered twice (at least once) is written once (docs/subscribers.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import sys

from gateway.subscriber import DataLoss, Subscriber


async def main(url: str, gateway_id: str, path: str, group: str | None,
               seconds: float | None) -> None:
    with open(path, "a", newline="") as f:
        out = csv.writer(f)
        async with Subscriber(url, gateway_id=gateway_id, group=group) as sub:
            async def sink() -> None:
                async for item in sub.samples():
                    if isinstance(item, DataLoss):
                        print(f"{item.subject}: samples not taken {item.samples} between "
                              f"{item.from_utc_ms} and {item.to_utc_ms}", file=sys.stderr)
                        continue
                    out.writerow([item.subject, item.boot, item.seq, item.prop, item.utc_ms,
                                  item.value, int(item.historical)])
                    f.flush()

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sink(), seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("broker")
    parser.add_argument("gateway_id")
    parser.add_argument("csv")
    parser.add_argument("--group", help="MQTT 5 shared-subscription group")
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    asyncio.run(main(args.broker, args.gateway_id, args.csv, args.group, args.seconds))
