"""The MQTT front end of the daemon core: requests in from the broker, answers out, losing none.

Threads: paho's network loop (callbacks: take requests, cancels, Home Assistant's
birth), a confirmation thread (journals and acknowledges once the broker has our
answer) and a metrics timer; answers are published from the core's worker thread
through each request's Sink (MqttAnswer). docs/protocol.md describes the protocol;
acks.py why acknowledgements wait for the answer.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from edgekit.engine.records import Chunk
from edgekit.errors import BadRequest, Busy, EdgekitError
from edgekit.serve.config import ServeConfig, broker_address
from edgekit.serve.core import Core, Outcome
from edgekit.serve.jobs import Job
from edgekit.serve.mqtt import announce, discovery, protocol
from edgekit.serve.mqtt.acks import Confirmations, Delivery, Ledger, Pending
from edgekit.serve.mqtt.journal import Journal
from edgekit.serve.mqtt.link import (
    connect_properties,
    message_property,
    new_client,
    publish_properties,
    quick_ack,
    release_stale_qos2,
)
from edgekit.serve.mqtt.protocol import Reply, Topics

log = logging.getLogger(__name__)

NOT_JOURNALED = {"busy", "internal"}  # worth a retry with the same id: never remembered as answered
RECEIVE_HEADROOM = 16  # unacked deliveries beyond queue + running, so cancels and busy answers get through
CLEAN_EXIT_WAIT_S = 5.0  # for the last answers' acknowledgements and the offline status


class MqttAnswer(Pending):
    """The Sink of one MQTT request: where its chunks and final message go, and what to acknowledge."""

    def __init__(self, front: MqttFrontEnd, reply: Reply, key: str, mids: Delivery) -> None:
        super().__init__(mids)
        self.front, self.reply, self.key = front, reply, key

    def chunk(self, job: Job, seq: int, chunk: Chunk) -> None:
        self.front.publish(self.reply, protocol.chunk_message(job.request_id, seq, chunk), final=False)

    def finish(self, job: Job, outcome: Outcome) -> None:
        if outcome.code == "draining":  # not acknowledged: the broker hands it to our next session
            return
        rid = job.request_id
        if outcome.code == "result":
            payload = protocol.result_message(rid, outcome.result, self.front.config.device_id, outcome.queue_ms)
        else:
            payload = protocol.error_message(rid, outcome.code, outcome.message)
        self.front.answer(self, payload, outcome.code)


class MqttFrontEnd:
    """Requests over one MQTT 5 connection, for the core; Home Assistant discovery, status, metrics."""

    name = "mqtt"

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.topics = Topics.for_device(config.prefix, config.device_id, config.topics.share_group)
        self.confirmations = Confirmations()
        self.core: Core | None = None
        self.journal: Journal | None = None
        self.client: mqtt.Client | None = None
        self.ledger: Ledger | None = None
        self._draining = False
        self._released = False  # the QoS 2 sweep of a previous process's packet ids is done
        self._stopped = threading.Event()
        self._threads: dict[str, threading.Thread] = {}

    # --- the FrontEnd protocol ----------------------------------------------------------------

    def start(self, core: Core) -> None:
        """Connect in the background: requests wait at the broker until we are there."""
        self.core = core
        self.journal = Journal(self.config.state_dir / "answered.jsonl", self.config.limits.dedup_window_s)
        self.client = self._new_client()
        self.ledger = Ledger(self.client.ack, self.journal)
        host, port, _tls = broker_address(self.config.broker.url)
        receive_maximum = self.config.limits.queue_size + 1 + RECEIVE_HEADROOM
        self.client.connect_async(host, port, keepalive=self.config.broker.keepalive_s, clean_start=False,
                                  properties=connect_properties(self.config.broker.session_expiry_s, receive_maximum))
        self._spawn("mqtt", lambda: self.client.loop_forever(retry_first_connection=True))
        if self.config.daemon.metrics_interval_s:
            self._spawn("metrics", self._publish_metrics_every)
        self.confirmations.start()

    def describe(self) -> str:
        return f"{self.config.broker.url} as {self.topics.prefix}"

    def draining(self) -> None:
        self._draining = True
        self._publish_status("stopping", "draining")

    def reloaded(self) -> None:
        self._publish_status("online", None)
        self.publish_discovery()

    def stop(self) -> None:
        """After the drain: the last answers' acknowledgements, offline, a clean DISCONNECT."""
        self._stopped.set()
        self.confirmations.wait_empty(CLEAN_EXIT_WAIT_S)
        info = self._publish_status("offline", "stopped")
        announce.wait_published(info, CLEAN_EXIT_WAIT_S)
        self.confirmations.stop()
        self.client.disconnect()  # a normal DISCONNECT: the broker discards the Last Will
        self._threads["mqtt"].join(timeout=CLEAN_EXIT_WAIT_S)
        self.journal.close()

    def healthy(self) -> bool:
        """Our threads are alive (the broker may be away: paho reconnects)."""
        return all(t.is_alive() for t in self._threads.values())

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=f"edgekit-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    # --- MQTT callbacks (paho's network thread) ------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        client = new_client(self.config.client_id, self.config.broker, manual_ack=True)
        will = announce.status_payload(self.config, "offline", "lost", self.core.engine)
        client.will_set(self.topics["status"], will, qos=1, retain=True)
        client.max_inflight_messages_set(64)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        quick_ack(client)
        self.confirmations.published(mid)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:  # refused: paho retries; we are not connected
            log.warning("broker %s refused the connection: %s", self.config.broker.url, reason)
            return
        self.ledger.new_connection()
        log.info("connected to %s (session present: %s)", self.config.broker.url, flags.session_present)
        if flags.session_present and not self._released and self.config.broker.answer_qos == 2:
            release_stale_qos2(client)  # only the first connect: later ones resume paho's own handshakes
        self._released = True
        subscriptions = [(self.topics.request_subscription, 1), (self.topics["cancel"], 1)]
        if self.config.topics.discovery:
            subscriptions.append((f"{self.config.topics.discovery_prefix}/status", 1))
        client.subscribe(subscriptions)  # the session keeps them, but a lost session would not
        self._publish_status("stopping" if self._draining else "online", None)
        self.publish_discovery()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if not self._draining:
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        quick_ack(client)
        try:
            self._dispatch(message)
        except Exception:  # never let one message kill paho's network thread
            log.exception("handling a message on %s failed", message.topic)
            self.ledger.ack(self._delivery(message))

    def _dispatch(self, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topics["request"]:
            self._take_request(message)
            return
        if message.topic == self.topics["cancel"]:
            self._take_cancel(message.payload)
        elif discovery.is_ha_birth(message.topic, message.payload,
                                   discovery_prefix=self.config.topics.discovery_prefix):
            self.publish_discovery()
        self.ledger.ack(self._delivery(message))

    # --- requests in ----------------------------------------------------------------------------

    def _take_request(self, message: mqtt.MQTTMessage) -> None:
        if self._draining:
            return  # not acknowledged: the broker hands it to our next session (or another daemon)
        delivery = self._delivery(message)
        response_topic = message_property(message, "ResponseTopic")
        correlation = message_property(message, "CorrelationData")
        try:
            data = protocol.decode(message.payload, self.config.limits)
        except BadRequest as exc:
            self._refuse(self._routable(protocol.reply_of({}, response_topic, correlation))[0], exc, delivery)
            return
        reply = protocol.reply_of(data, response_topic, correlation)
        if self._is_duplicate(reply, delivery, message.dup):
            return
        routable, problem = self._routable(reply)
        try:
            if problem is not None:
                raise problem
            incoming = protocol.parse(data, reply, self.config.limits)
        except BadRequest as exc:
            self._refuse(routable, exc, delivery)
            return
        self._accept(incoming, delivery, message_property(message, "MessageExpiryInterval"))

    def _routable(self, reply: Reply) -> tuple[Reply, BadRequest | None]:
        """The reply itself, or, when its topic is not allowed, a route to {node}/errors and the reason."""
        try:
            protocol.check_reply_topic(reply, self.config.topics.reply_prefix)
        except BadRequest as exc:
            return Reply(None, reply.correlation, reply.request_id), exc
        return reply, None

    def _is_duplicate(self, reply: Reply, delivery: Delivery, dup: bool) -> bool:
        state = self.ledger.duplicate(reply.key, delivery)
        if state is not None:
            log.info("request %s: a duplicate (dup flag %s) of one %s", reply.request_id, dup, state)
        return state is not None

    def _accept(self, incoming: protocol.Incoming, delivery: Delivery, expiry_s: int | None) -> None:
        key = incoming.reply.key or f"\0{incoming.request.id}"
        answer = MqttAnswer(self, incoming.reply, key, list(delivery))
        self.ledger.add(key, answer)
        expires_at = time.monotonic() + expiry_s if expiry_s is not None else None
        try:
            self.core.submit(incoming.request, answer, front_end=self.name, stream=incoming.stream,
                             expires_at=expires_at)
        except Busy as exc:
            self.ledger.drop(key)
            self._refuse(incoming.reply, exc, answer.mids)

    def _take_cancel(self, payload: bytes) -> None:
        try:
            request_id = str(protocol.decode(payload, self.config.limits)["id"])
        except (BadRequest, KeyError) as exc:
            log.warning("ignoring a cancel without an id: %s", exc)
            return
        jobs = self.core.jobs_of(None, request_id)
        for job in jobs:
            self.core.cancel(job)
        log.info("cancel %s: %d request(s)", request_id, len(jobs))

    # --- answers out ------------------------------------------------------------------------------

    def _refuse(self, reply: Reply, error: EdgekitError, delivery: Delivery) -> None:
        """An error at intake: answered and acknowledged, never remembered (the client may fix and retry)."""
        self.core.metrics.error(error.code, self.name)
        if reply.topic is None:
            log.warning("request %s refused (%s: %s); no reply topic, told %s", reply.request_id, error.code,
                        error, self.topics["errors"])
        info = self.publish(reply, protocol.error_message(reply.request_id, error.code, str(error)))
        self.confirmations.add(info, lambda: self.ledger.ack(delivery))

    def answer(self, answer: MqttAnswer, payload: bytes, code: str) -> None:
        """A job's final message: remembered first, acknowledged once the broker has the answer."""
        remember = code not in NOT_JOURNALED and answer.reply.key is not None
        if remember:
            self.journal.record(answer.reply.key)
        info = self.publish(answer.reply, payload)
        self.confirmations.add(info, lambda: self.ledger.commit(answer.key, answer, remember))

    def publish(self, reply: Reply, payload: bytes, final: bool = True) -> mqtt.MQTTMessageInfo:
        """Chunks at QoS 1 (a repeat has the same seq); final answers at answer_qos (2: a resend after a
        reconnect is recognised by the broker, not delivered twice)."""
        topic = reply.topic or self.topics["errors"]
        qos = self.config.broker.answer_qos if final else 1
        return self.client.publish(topic, payload, qos=qos, properties=publish_properties(reply.correlation))

    def _delivery(self, message: mqtt.MQTTMessage) -> Delivery:
        return self.ledger.delivery(message.qos, message.mid)

    # --- status, discovery, metrics ------------------------------------------------------------------

    def _publish_status(self, state: str, reason: str | None) -> mqtt.MQTTMessageInfo:
        return announce.publish_status(self.client, self.core.config, self.topics, state, reason, self.core.engine)

    def publish_discovery(self) -> None:
        announce.publish_discovery(self.client, self.core.config, self.topics, self.core.engine)

    def _publish_metrics_every(self) -> None:
        while not self._stopped.wait(self.config.daemon.metrics_interval_s):
            if self.client.is_connected():
                snapshot = self.core.metrics.snapshot(len(self.core.queue), self.core.busy,
                                                     self.core.cache_stats())
                announce.publish_metrics(self.client, self.topics, snapshot)
