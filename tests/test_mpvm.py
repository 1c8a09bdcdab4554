"""The MicroPython VM harness really runs MicroPython, with the device layout."""

import pytest
from mpvm import MicroPythonError


def test_runs_real_micropython(micropython):
    out = micropython("import sys\nprint(sys.implementation.name)\nprint(sys.version)")
    name, version = out.splitlines()
    assert name == "micropython"
    assert "MicroPython" in version


def test_repo_packages_import_from_lib_as_on_the_device(micropython):
    out = micropython(
        "import sys, firmware, sensor_drivers, sensor_drivers.emulators\n"
        "print(sys.path[0])\n"
        "print(firmware.__file__)\n"
        "print(sensor_drivers.emulators.__file__)\n"
        "try:\n"
        "    import simulation\n"
        "    print('simulation copied')\n"
        "except ImportError:\n"
        "    print('no simulation')\n"
    )
    assert out.splitlines() == [
        "/lib",
        "/lib/firmware/__init__.py",
        "/lib/sensor_drivers/emulators/__init__.py",
        "no simulation",
    ]


def test_exception_surfaces_with_micropython_traceback_and_prior_stdout(micropython):
    code = "print('before')\ndef explode():\n    raise ValueError('boom 42')\nexplode()\n"
    with pytest.raises(MicroPythonError) as caught:
        micropython(code)
    message = str(caught.value)
    assert message.startswith("Traceback (most recent call last):")
    assert "in explode" in message
    assert message.rstrip().endswith("ValueError: boom 42")
    assert caught.value.stdout == "before\n"


def test_syntax_error_is_reported(micropython):
    with pytest.raises(MicroPythonError, match="SyntaxError"):
        micropython("def broken(:\n    pass\n")


def test_top_level_await_drives_coroutines(micropython):
    code = (
        "import asyncio\n"
        "async def worker(name, delay_ms, log):\n"
        "    await asyncio.sleep_ms(delay_ms)\n"
        "    log.append(name)\n"
        "async def main():\n"
        "    log = []\n"
        "    await asyncio.gather(worker('slow', 20, log), worker('fast', 1, log))\n"
        "    return log\n"
        "print(await main())\n"
    )
    assert micropython(code).strip() == "['fast', 'slow']"


def test_asyncio_run_fails_with_a_pointer_to_await(micropython):
    with pytest.raises(MicroPythonError, match="await main"):
        micropython("import asyncio\nasync def main():\n    pass\nasyncio.run(main())\n")


def test_heap_lock_forbids_allocation_and_mem_alloc_measures_it(micropython):
    code = (
        "import gc, micropython\n"
        "buf = bytearray(4)\n"
        "micropython.heap_lock()\n"
        "try:\n"
        "    buf[0] = 7\n"
        "    print('in-place ok')\n"
        "    try:\n"
        "        bytearray(64)\n"
        "        print('allocated while locked')\n"
        "    except MemoryError:\n"
        "        print('MemoryError while locked')\n"
        "finally:\n"
        "    micropython.heap_unlock()\n"
        "gc.collect()\n"
        "before = gc.mem_alloc()\n"
        "keep = bytearray(10000)\n"
        "print(gc.mem_alloc() - before >= 10000)\n"
    )
    assert micropython(code).splitlines() == ["in-place ok", "MemoryError while locked", "True"]


def test_timeout_is_reported_not_hung(micropython):
    with pytest.raises(MicroPythonError, match="timed out"):
        micropython("while True:\n    pass\n", timeout_s=1)
