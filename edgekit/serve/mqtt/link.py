"""paho-mqtt clients set up the way both the daemon and the request client need them.

MQTT 5, TLS and credentials from the config, and TCP_NODELAY on the socket: with
Nagle's algorithm on, a request/response round trip through Mosquitto on loopback
takes 44-88 ms (Nagle waits for the delayed ACK); with it off, well under 1 ms.

The daemon's final answers need three things paho 2.1 has no public API for (journal.py
says why): the packet id of a QoS 2 publish before it leaves, a hook on PUBREC before the
PUBREL leaves, and flows of a killed process resumed with their own packet ids. _Client
reaches into paho's internals for them; pyproject.toml pins paho's minor version and
tests/test_serve_link.py fails loudly if an upgrade moves them.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgekit.errors import BrokerError
from edgekit.serve.config import BrokerConfig, broker_address, broker_password

log = logging.getLogger(__name__)


class _Client(mqtt.Client):
    """paho's client, telling us why a (re)connect failed (loop_forever() swallows the OSError),
    and with the QoS 2 hooks the daemon's answers need."""

    on_connect_error: Callable[[OSError], None] | None = None
    on_pubrec: Callable[[int], None] | None = None  # on paho's network thread, before the PUBREL leaves

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._before_send = threading.local()

    def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,  # type: ignore[override]
                properties: Properties | None = None,
                before_send: Callable[[int], None] | None = None) -> mqtt.MQTTMessageInfo:
        """paho's publish; ``before_send(packet id)`` runs once the id is chosen, before the PUBLISH can leave.

        If it raises, nothing is sent or kept.
        """
        self._before_send.hook = before_send
        try:
            return super().publish(topic, payload, qos, retain, properties)
        finally:
            self._before_send.hook = None

    def _mid_generate(self) -> int:
        """The next packet id not held by a message in flight (paho's own would reuse a resumed flow's)."""
        with self._mid_generate_mutex:
            for _ in range(65535):
                self._last_mid = self._last_mid % 65535 + 1
                if self._last_mid not in self._out_messages:
                    break
            mid = self._last_mid
        hook = getattr(self._before_send, "hook", None)
        if hook is not None:
            hook(mid)
        return mid

    def resume(self, mid: int, topic: str, payload: bytes, properties: Properties | None, released: bool) -> None:
        """A QoS 2 flow a killed process left: on (re)connect paho sends the PUBLISH again with DUP set and
        this packet id (the broker, holding the id, delivers it once), or, once released, only the PUBREL."""
        message = mqtt.MQTTMessage(mid, topic.encode())
        message.payload, message.qos, message.dup, message.properties = payload, 2, True, properties
        message.state = mqtt.mqtt_ms_wait_for_pubcomp if released else mqtt.mqtt_ms_wait_for_pubrec
        with self._out_message_mutex:
            self._out_messages[mid] = message

    def _handle_pubrec(self) -> mqtt.MQTTErrorCode:
        """Journal the release before paho sends the PUBREL; a refusal (reason >= 0x80) ends the flow.

        MQTT 5, 4.3.3: after a PUBREC with a reason code of 0x80 or more there is no PUBREL and the
        packet id is free again; paho 2.1 ignores the code and releases anyway, so the broker's
        PUBCOMP (0x92, id not found) would hide a quota refusal. It goes to on_publish instead.
        """
        packet = self._in_packet["packet"]
        mid, = struct.unpack("!H", packet[:2])
        reason = packet[2] if self._in_packet["remaining_length"] > 2 else 0
        with self._out_message_mutex:
            message = self._out_messages.get(mid)
            if message is not None and message.state == mqtt.mqtt_ms_wait_for_pubrec:
                if reason >= 0x80:
                    return self._do_on_publish(mid, ReasonCode(PacketTypes.PUBREC, identifier=reason),
                                               Properties(PacketTypes.PUBREC))
                if self.on_pubrec is not None:
                    self.on_pubrec(mid)
        return super()._handle_pubrec()

    def reconnect(self) -> mqtt.MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:  # ssl.SSLError and socket.gaierror are OSErrors too
            if self.on_connect_error is not None:
                self.on_connect_error(exc)
            raise


def describe_connect_error(exc: OSError, tls: bool = False) -> str:
    """Why a connection failed, in a user's words: DNS, refused, TLS, unreachable."""
    if tls and isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        return "TLS failure: the broker closed the connection during the TLS handshake (is this port a TLS listener?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name (DNS: {exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running, on this port?)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failure: {getattr(exc, 'verify_message', None) or exc.reason or exc}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "unreachable (connection timed out)"
    return f"unreachable ({exc.strerror or exc})"


def new_client(client_id: str, broker: BrokerConfig, *, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT 5 client with credentials, TLS and TCP_NODELAY; not yet connected."""
    client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                     manual_ack=manual_ack)
    _host, _port, tls = broker_address(broker.url)
    if tls:
        _set_tls(client, broker)
    if broker.username is not None:
        client.username_pw_set(broker.username, broker_password(broker))
    client.on_socket_open = _no_delay
    client.reconnect_delay_set(min_delay=max(1, int(broker.reconnect_min_s)), max_delay=int(broker.reconnect_max_s))
    paho_log = logging.getLogger("edgekit.serve.paho")
    if paho_log.isEnabledFor(logging.DEBUG):  # paho's own log is noise (and cries ERROR at a clean exit)
        client.enable_logger(paho_log)
    return client


def connect_properties(session_expiry_s: int, receive_maximum: int | None = None) -> Properties:
    """CONNECT properties: how long the broker keeps our session, how many unacked messages it may send us."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    if receive_maximum:
        props.ReceiveMaximum = min(receive_maximum, 65535)
    return props


def publish_properties(correlation: bytes | None = None, response_topic: str | None = None,
                       expiry_s: int | None = None) -> Properties | None:
    """PUBLISH properties for a request or a reply; None when there are none to send."""
    if correlation is None and response_topic is None and expiry_s is None:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if correlation is not None:
        props.CorrelationData = correlation
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if expiry_s is not None:
        props.MessageExpiryInterval = expiry_s
    return props


def message_property(message: mqtt.MQTTMessage, name: str) -> Any:
    """A PUBLISH property of a received message, or None (MQTT 3.1.1 senders have none)."""
    return getattr(message.properties, name, None) if message.properties is not None else None


def connect_blocking(client: mqtt.Client, url: str, keepalive_s: int, properties: Properties | None = None,
                     clean_start: bool | int = True) -> None:
    """Connect once now (the request client): a refused or unreachable broker is a BrokerError."""
    host, port, _tls = broker_address(url)
    try:
        client.connect(host, port, keepalive=keepalive_s, clean_start=clean_start, properties=properties)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"cannot reach the MQTT broker at {url}: {describe_connect_error(exc, _tls)} "
                          "(is it running? check --broker)") from None


def quick_ack(client: mqtt.Client) -> None:
    """ACK what we just received now, not after Linux's delayed-ACK timer (up to 40 ms).

    Call on every PUBACK and message received. Mosquitto leaves Nagle's algorithm on for
    its side unless set_tcp_nodelay is configured: it then holds its next packet to us
    (a reply) until our ACK of its last one (a PUBACK) arrives. TCP_QUICKACK flushes it.
    """
    sock = client.socket()
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except (OSError, AttributeError):
            pass


def _set_tls(client: mqtt.Client, broker: BrokerConfig) -> None:
    try:
        client.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None,
                       certfile=str(broker.cert_file) if broker.cert_file else None,
                       keyfile=str(broker.key_file) if broker.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"TLS setup for {broker.url} failed: {exc} (check ca_file/cert_file/key_file)") from None


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Called by paho whenever it opens the broker socket, reconnects included."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:  # a websocket or unix socket: nothing to tune
        log.debug("TCP_NODELAY not set: %s", exc)
