"""Everything that stands in for hardware or a server, and nothing a real gateway runs.

- `device_shims/`: CPython stand-ins for MicroPython's `aioble`, `bluetooth`, `machine` and
  `micropython`, so the unchanged firmware source runs on the host;
- `virtual_patch`: that firmware over Bumble with emulated chips (a patch without hardware);
- `virtual_radio`: Bumble virtual controllers on a shared link (a radio without hardware);
- `broker`: a private mosquitto on a free loopback port (a broker without a clinic);
- `demo`, `simulator`: virtual patches + gateway + broker, in one process or behind HCI-over-TCP.

`dermtwin run` imports none of this (tests/test_layering.py checks it).
"""
