# Sampling schedule, changeable from the gateway (SET_CONFIG). Periods in seconds.
import json
import os

from firmware.protocol_ids import (
    CFG_BATTERY_PERIOD_S,
    CFG_FLUSH_INTERVAL_S,
    CFG_HYDRATION_PERIOD_S,
    CFG_TEMP_PERIOD_S,
    CFG_UV_FAST_PERIOD_S,
    CFG_UV_PERIOD_S,
)

# design.md §1 defaults; flush interval: how long live samples may wait to fill a frame.
_DEFAULTS = {
    CFG_TEMP_PERIOD_S: 10,
    CFG_UV_PERIOD_S: 5,
    CFG_UV_FAST_PERIOD_S: 1,
    CFG_HYDRATION_PERIOD_S: 60,
    CFG_BATTERY_PERIOD_S: 300,
    CFG_FLUSH_INTERVAL_S: 60,
}
_MAX_PERIOD_S = 65535  # periods travel as u16 in the status record


class SamplingConfig:
    """Defaults, then the board's overrides, then what the gateway set (SET_CONFIG), which
    is persisted at `path` and survives reboots."""

    def __init__(self, overrides=None, path=None):
        self.values = dict(_DEFAULTS)
        self.path = path
        if overrides:
            for key in overrides:
                if not self.set(key, overrides[key]):
                    raise ValueError("bad sampling config key %r = %r" % (key, overrides[key]))
        for key, value in self._load().items():
            self.set(key, value)   # a bad saved entry is ignored, not fatal

    def _load(self):
        if self.path is None:
            return {}
        try:
            with open(self.path) as f:
                saved = json.load(f)
            return {int(k): int(v) for k, v in saved.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def save(self):
        if self.path is None:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({str(k): v for k, v in self.values.items()}, f)
        os.rename(tmp, self.path)

    def set(self, key, value):
        if key not in self.values or value < 1 or value > _MAX_PERIOD_S:
            return False
        self.values[key] = value
        return True

    def get(self, key):
        return self.values[key]
