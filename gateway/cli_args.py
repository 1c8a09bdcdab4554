"""Argument types shared by the CLI's commands (argparse `type=` callables)."""

from __future__ import annotations

import argparse


def location(text: str) -> tuple[float, float]:
    """`LAT,LON` in degrees, as `run --location` and `report --location` take it."""
    try:
        latitude, longitude = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give LAT,LON in degrees, e.g. 45.5,-73.6") from None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise argparse.ArgumentTypeError(f"{text!r}: latitude -90..90, longitude -180..180")
    return latitude, longitude
