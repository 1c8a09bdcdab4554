"""MQTT side of the gateway: broker settings (config), inbound payloads (inbound, sans-I/O)
and the outbox publisher (publisher, the paho adapter).

Import from the module you need: this package imports nothing, so a sans-I/O module here
(inbound) does not load paho.
"""
