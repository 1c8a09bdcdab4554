"""`dermtwin sink`: a research sink from the gateway's MQTT topics into PostgreSQL
(docs/sink.md).

- `rows`: the sans-I/O core: messages → rows (samples, twin history, alerts), batches.
- `schema`: the tables, indexes and the batched `ON CONFLICT DO NOTHING` inserts.
- `postgres`: the psycopg adapter; `mqtt_source`: the paho adapter (shared subscription,
  PUBACK after commit); `command`: the CLI command that wires them.
"""
