"""`edgekit serve`: one daemon core with front ends (MQTT 5 today, HTTP beside it).

core.py       Core: engine ownership, the queue and worker, drain, reload, watchdog; Outcome, Sink, FrontEnd
jobs.py       Job and the bounded JobQueue
engines.py    opening the engine with the planned settings and a warm-up
metrics.py    counters (per front end) and percentiles
config.py     ServeConfig: edgekit.toml, EDGEKIT_* environment, flags; secrets from files
notify.py     sd_notify; service.py systemd units
mqtt/         the MQTT front end: protocol, link (paho), acks, journal, announce, discovery, client, mosquitto
"""
