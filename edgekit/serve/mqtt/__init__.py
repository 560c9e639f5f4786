"""The MQTT 5 front end of `edgekit serve`, and its client.

front.py      MqttFrontEnd: requests from the broker into the core, answers back, losing none
protocol.py   the wire format: topics, requests read (payload + properties), answers written and read back
acks.py       acknowledgement after the answer, the broker's window: Ledger, Outbox
journal.py    answers' QoS 2 flows and answered keys on disk: answered once across SIGKILL
link.py       paho clients: MQTT 5, TLS, credentials, TCP_NODELAY / TCP_QUICKACK, QoS 2 resumption
announce.py   retained status, Home Assistant discovery, metrics; discovery.py the HA payloads
client.py     RequestClient and `edgekit request`
mosquitto.py  a private Mosquitto for the demo and the tests
"""
