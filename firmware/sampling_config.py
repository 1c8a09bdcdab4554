# Sampling schedule, changeable from the gateway (SET_CONFIG). Periods in seconds.
try:
    from micropython import const
except ImportError:
    def const(x):
        return x

KEY_TEMP_PERIOD_S = const(1)
KEY_UV_PERIOD_S = const(2)
KEY_UV_FAST_PERIOD_S = const(3)
KEY_HYDRATION_PERIOD_S = const(4)
KEY_BATTERY_PERIOD_S = const(5)
KEY_FLUSH_INTERVAL_S = const(6)

# design.md §1 defaults; flush interval: how long live samples may wait to fill a frame.
_DEFAULTS = {
    KEY_TEMP_PERIOD_S: 10,
    KEY_UV_PERIOD_S: 5,
    KEY_UV_FAST_PERIOD_S: 1,
    KEY_HYDRATION_PERIOD_S: 60,
    KEY_BATTERY_PERIOD_S: 300,
    KEY_FLUSH_INTERVAL_S: 60,
}
_MAX_PERIOD_S = const(86400)


class SamplingConfig:
    def __init__(self, overrides=None):
        self.values = dict(_DEFAULTS)
        if overrides:
            for key in overrides:
                if not self.set(key, overrides[key]):
                    raise ValueError("bad sampling config key %r = %r" % (key, overrides[key]))

    def set(self, key, value):
        if key not in self.values or value < 1 or value > _MAX_PERIOD_S:
            return False
        self.values[key] = value
        return True

    def get(self, key):
        return self.values[key]
