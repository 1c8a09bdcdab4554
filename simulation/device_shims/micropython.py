"""CPython stand-in for MicroPython's `micropython` module, so firmware source runs unchanged
as a virtual patch. Only what the firmware uses; allocation control is a no-op here (the real
VM tests in tests/ check allocation)."""


def const(value):
    return value


def native(func):
    return func


def viper(func):
    return func


def heap_lock():
    return 0


def heap_unlock():
    return 0


def alloc_emergency_exception_buf(size):
    return None


def schedule(func, arg):
    func(arg)
