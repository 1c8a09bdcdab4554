"""A Bumble `Host` that hands subscribed notifications straight to their listener.

A backlog drain brings ~1,800 notifications a minute of radio time per patch (ten thousand
a second at full speed). Bumble's own path for each one goes through an event emitter, the
L2CAP channel manager, an ATT PDU object and the GATT client, and formats two debug strings
(the HCI packet and the ATT PDU, with colours) even when nothing logs them: ~100 µs of
Python per notification here. This host keeps Bumble's path for everything else and
short-cuts only what a `BumbleClientBackend.start_notify` subscribed to: an ATT Handle
Value Notification (Core spec Vol 3, Part F, 3.4.7.1: opcode 0x1B, handle, value) on the
fixed ATT channel of a connection, for a handle with a listener, goes to the listener with
its value. With DEBUG logging on for Bumble, or a snooper attached, nothing is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bumble import hci
from bumble.host import Host

ATT_CID = 0x0004                       # Vol 3, Part A, 2.1: the fixed ATT channel
ATT_HANDLE_VALUE_NOTIFICATION = 0x1B   # Vol 3, Part F, 3.4.7.1
_ATT_HEADER_BYTES = 3                  # opcode + attribute handle

NotificationListener = Callable[[bytes], None]

# Bumble's loggers whose debug lines the short-cut leaves out
_BUMBLE_LOGS = (logging.getLogger("bumble.host"), logging.getLogger("bumble.gatt_client"))


class NotificationFastPathHost(Host):
    """Bumble's host with listeners per (connection handle, attribute handle)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._notification_listeners: dict[tuple[int, int], NotificationListener] = {}
        self.notifications_short_cut = 0

    @property
    def listening(self) -> int:
        """How many (connection, attribute) pairs have a listener."""
        return len(self._notification_listeners)

    def _short_cut_allowed(self) -> bool:
        return self.snooper is None and not any(
            log.isEnabledFor(logging.DEBUG) for log in _BUMBLE_LOGS)

    def add_notification_listener(self, connection_handle: int, attribute_handle: int,
                                  listener: NotificationListener) -> Callable[[], None]:
        key = (connection_handle, attribute_handle)
        self._notification_listeners[key] = listener

        def remove() -> None:
            if self._notification_listeners.get(key) is listener:
                del self._notification_listeners[key]

        return remove

    def forget_connection(self, connection_handle: int) -> None:
        """Drop the listeners of a connection that ended (its handle may be reused)."""
        for key in [k for k in self._notification_listeners if k[0] == connection_handle]:
            del self._notification_listeners[key]

    def on_hci_packet(self, packet: hci.HCI_Packet) -> None:
        if isinstance(packet, hci.HCI_AclDataPacket) and self._short_cut_allowed():
            self.on_hci_acl_data_packet(packet)   # what Host does, less the debug string
            return
        super().on_hci_packet(packet)

    def on_l2cap_pdu(self, connection: Any, cid: int, pdu: bytes) -> None:
        if (cid == ATT_CID and len(pdu) >= _ATT_HEADER_BYTES
                and pdu[0] == ATT_HANDLE_VALUE_NOTIFICATION):
            attribute_handle = pdu[1] | (pdu[2] << 8)
            listener = self._notification_listeners.get((connection.handle, attribute_handle))
            if listener is not None and self._short_cut_allowed():
                self.notifications_short_cut += 1
                listener(pdu[_ATT_HEADER_BYTES:])
                return
        super().on_l2cap_pdu(connection, cid, pdu)
