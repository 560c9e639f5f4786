"""`edgekit serve`: LLM requests over MQTT 5, for IoT and Home Assistant back ends.

protocol.py   topics, request parsing and validation, reply messages (docs/protocol.md)
config.py     ServeConfig: edgekit.toml, EDGEKIT_* environment, flags; secrets from files
daemon.py     the daemon: MQTT callbacks, the worker, drain on SIGTERM, reload on SIGHUP
jobs.py       accepted requests, the bounded queue, acknowledgement after the answer
journal.py    answered request keys on disk: answered once across SIGKILL
link.py       paho clients: MQTT 5, TLS, credentials, TCP_NODELAY / TCP_QUICKACK
engines.py    opening the engine with the planned settings and a warm-up
announce.py   retained status, Home Assistant discovery, metrics
metrics.py    counters and percentiles for {prefix}/metrics
client.py     RequestClient and `edgekit request`
notify.py     sd_notify; discovery.py Home Assistant payloads; service.py systemd units
mosquitto.py  a private Mosquitto for the demo and the tests
"""
