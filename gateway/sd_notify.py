"""systemd's notify protocol (sd_notify(3)) without a library: one datagram to the socket
named in $NOTIFY_SOCKET ("READY=1", "WATCHDOG=1", "STATUS=..."). Does nothing when the
daemon does not run under systemd (no $NOTIFY_SOCKET)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

_failed_once = False


def notify(message: str) -> bool:
    """Send one notification; False if there is no socket or sending failed (logged once)."""
    global _failed_once
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):   # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        if not _failed_once:
            log.error("cannot notify systemd at %s: %s (the watchdog will restart the "
                      "gateway)", address, error)
            _failed_once = True
        return False
    return True
