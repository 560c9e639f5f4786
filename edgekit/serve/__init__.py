"""`edgekit serve`: one daemon core with front ends (MQTT 5 today, HTTP beside it).

core.py       Core: engine ownership, the queue and worker, drain, reload, watchdog; Outcome, Sink, FrontEnd
jobs.py       Job and the bounded JobQueue
requests.py   edgekit's request object checked against the limits: the same rules for MQTT and HTTP
engines.py    opening the engine with the planned settings and a warm-up
metrics.py    counters (per front end) and percentiles
config.py     ServeConfig: edgekit.toml, EDGEKIT_* environment, flags; secrets from files
notify.py     sd_notify
systemd_unit.py    the systemd unit, its GPU drop-in and env file, rendered from tables
install_service.py `edgekit install-service`: the unit, edgekit.toml and the env file one box needs
mqtt/         the MQTT front end: protocol, link (paho), acks, journal, announce, discovery, client, mosquitto
"""
