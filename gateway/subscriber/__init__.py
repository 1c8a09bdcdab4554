"""A subscriber library for dermtwin's MQTT interface (docs/subscribers.md).

- `Subscriber`: asyncio client (`async with`, `async for`): `twins()` and `samples()`.
- `TwinFollower`, `SampleDeduper`: the sans-I/O cores, for any other MQTT client.
"""

from gateway.subscriber.client import Subscriber, SubscriberError
from gateway.subscriber.samples import DataLoss, SampleDeduper, SampleRow
from gateway.subscriber.twins import Twin, TwinFollower

__all__ = ["DataLoss", "SampleDeduper", "SampleRow", "Subscriber", "SubscriberError", "Twin",
           "TwinFollower"]
