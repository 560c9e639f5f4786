"""The MQTT front end of the daemon core: requests in from the broker, answers out, losing none.

Threads: paho's network loop (callbacks: take requests, cancels, Home Assistant's
birth), a confirmation thread (journals and acknowledges once the broker has our
answer) and a metrics timer; answers are published from the core's worker thread
through each request's Sink (MqttAnswer). docs/protocol.md describes the protocol;
acks.py why acknowledgements wait for the answer; journal.py how a final answer's QoS 2
flow survives a SIGKILL.
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
from edgekit.serve.core import Core, Outcome, model_name
from edgekit.serve.jobs import Job
from edgekit.serve.mqtt import announce, discovery, protocol
from edgekit.serve.mqtt.acks import Delivery, Ledger, Message, Outbox, Pending
from edgekit.serve.mqtt.journal import Flow, Journal, crash_point
from edgekit.serve.mqtt.link import (
    connect_properties,
    describe_connect_error,
    message_property,
    new_client,
    publish_properties,
    quick_ack,
)
from edgekit.serve.mqtt.protocol import Reply, Topics

log = logging.getLogger(__name__)

NOT_JOURNALED = {"busy", "internal", "timeout"}  # worth a retry with the same id: never remembered as answered
RECEIVE_HEADROOM = 16  # unacked deliveries beyond queue + running, so cancels and busy answers get through
CLEAN_EXIT_WAIT_S = 5.0  # for the last answers' acknowledgements and the offline status
PROBLEM_REPEAT_S = 300.0  # the same connection problem is logged again after this
DISCOVERY_EVERY_S = 10.0  # Home Assistant's birth messages re-announce discovery at most this often


class MqttAnswer(Pending):
    """The Sink of one MQTT request: where its chunks and final message go, and what to acknowledge."""

    def __init__(self, front: MqttFrontEnd, reply: Reply, key: str, mids: Delivery) -> None:
        super().__init__(mids)
        self.front, self.reply, self.key = front, reply, key

    def chunk(self, job: Job, seq: int, chunk: Chunk) -> None:
        self.front.send(self.reply, protocol.chunk_message(job.request_id, seq, chunk))

    def finish(self, job: Job, outcome: Outcome) -> None:
        if outcome.code == "draining":  # not acknowledged: the broker hands it to our next session
            return
        self.front.answer(self, job, outcome)


class MqttFrontEnd:
    """Requests over one MQTT 5 connection, for the core; Home Assistant discovery, status, metrics."""

    name = "mqtt"

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.topics = Topics.for_device(config.prefix, config.device_id, config.topics.share_group)
        self.outbox: Outbox | None = None
        self.core: Core | None = None
        self.journal: Journal | None = None
        self.client: mqtt.Client | None = None
        self.ledger: Ledger | None = None
        self._draining = False
        self._connected = False
        self._problem: tuple[str | None, float] = (None, 0.0)  # the last connection problem logged, and when
        self._discovery_lock = threading.Lock()
        self._last_discovery = -DISCOVERY_EVERY_S
        self._discovery_due = False
        self._stopped = threading.Event()
        self._threads: dict[str, threading.Thread] = {}

    # --- the FrontEnd protocol ----------------------------------------------------------------

    def start(self, core: Core) -> None:
        """Connect in the background: requests wait at the broker until we are there."""
        self.core = core
        self.journal = Journal(self.config.state_dir / "answered.jsonl", self.config.limits.dedup_window_s)
        self.client = self._new_client()
        self.outbox = Outbox(self.client.publish)
        self.ledger = Ledger(self.client.ack, self.journal)
        self._resume_flows()
        host, port, _tls = broker_address(self.config.broker.url)
        receive_maximum = self.config.limits.queue_size + 1 + RECEIVE_HEADROOM
        log.info("connecting to %s as %s", self.config.broker.url, self.config.client_id)
        self.client.connect_async(host, port, keepalive=self.config.broker.keepalive_s, clean_start=False,
                                  properties=connect_properties(self.config.broker.session_expiry_s, receive_maximum))
        self._spawn("mqtt", lambda: self.client.loop_forever(retry_first_connection=True))
        if self.config.daemon.metrics_interval_s:
            self._spawn("metrics", self._publish_metrics_every)
        self.outbox.start()

    def describe(self) -> str:
        state = "" if self._connected else " (connecting)"
        return f"{self.config.broker.url} as {self.topics.prefix}{state}"

    def draining(self) -> None:
        self._draining = True
        self._publish_status("stopping", "draining")

    def reloaded(self) -> None:
        self._publish_status("online", None)
        self.publish_discovery()

    def stop(self) -> None:
        """After the drain: the last answers' acknowledgements, offline, a clean DISCONNECT."""
        self._stopped.set()
        self._publish_status("offline", "stopped")
        self.outbox.wait_empty(CLEAN_EXIT_WAIT_S)  # the last answers' acknowledgements, and offline
        self.outbox.stop()
        self.client.disconnect()  # a normal DISCONNECT: the broker discards the Last Will
        self._threads["mqtt"].join(timeout=CLEAN_EXIT_WAIT_S)
        self.journal.close()

    def healthy(self) -> bool:
        """Our threads are alive (the broker may be away: paho reconnects)."""
        return all(t.is_alive() for t in self._threads.values()) and self.outbox.alive()

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=f"edgekit-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    # --- MQTT callbacks (paho's network thread) ------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        client = new_client(self.config.client_id, self.config.broker, manual_ack=True)
        will = announce.status_payload(self.config, "offline", "lost", self.core.engine)
        client.will_set(self.topics["status"], will, qos=1, retain=True)
        client.max_inflight_messages_set(0)  # no limit of paho's: the Outbox keeps to the broker's
        client.on_connect = self._on_connect
        tls = broker_address(self.config.broker.url)[2]
        client.on_connect_error = lambda exc: self._connection_problem(describe_connect_error(exc, tls))
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_pubrec = self._on_pubrec
        return client

    def _resume_flows(self) -> None:
        """Answers a killed process left half-sent: paho finishes them with their own packet ids on connect.

        Their requests come again from the broker (never acknowledged): each is folded into
        its flow (Ledger "in progress") and acknowledged once the flow completes, never run again.
        """
        flows = self.journal.open_flows()
        for flow in flows:
            pending = Pending()
            self.ledger.add(flow.key, pending)
            message = self._flow_message(flow.key, flow.topic, flow.payload, flow.correlation,
                                         lambda key=flow.key, pending=pending: self._confirmed(key, pending, True))
            self.client.resume(flow.mid, flow.topic, flow.payload, message.properties, flow.state == "released")
            self.outbox.resume(flow.mid, message)
        if flows:
            log.info("finishing %d answer(s) a killed process left unfinished (%d released)", len(flows),
                     sum(flow.state == "released" for flow in flows))

    def _on_pubrec(self, mid: int) -> None:
        """The broker has answer ``mid`` (paho's network thread): journal the release before the PUBREL leaves."""
        crash_point("pubrec")
        try:
            self.journal.released(mid)
        except OSError:  # the PUBREL goes anyway: holding it would hold the answer forever
            log.exception("cannot journal the release of packet %d: a restart now could repeat its answer", mid)
        crash_point("released")

    def _connection_problem(self, text: str) -> None:
        """One WARNING per cause (again after PROBLEM_REPEAT_S): paho retries with backoff meanwhile."""
        last, when = self._problem
        if text != last or time.monotonic() - when > PROBLEM_REPEAT_S:
            log.warning("broker %s: %s; retrying", self.config.broker.url, text)
            self._problem = (text, time.monotonic())

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        quick_ack(client)
        self.outbox.published(mid, reason.value if reason is not None else 0)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:  # refused: paho retries; we are not connected
            self._connection_problem(f"refused the connection: {reason}")
            return
        # The broker's Receive Maximum is our in-flight window (MQTT 5, 3.2.2.3.3; absent: 65,535).
        window = getattr(properties, "ReceiveMaximum", 65535) if properties is not None else 65535
        self.outbox.set_window(window)
        self.ledger.new_connection()
        self._connected, self._problem = True, (None, 0.0)
        log.info("connected to %s (session present: %s, in-flight window %d)", self.config.broker.url,
                 flags.session_present, window)
        if not flags.session_present and len(self.outbox):
            log.warning("the broker lost our session: unfinished answers are published anew, released ones "
                        "count as delivered (the broker may have dropped them)")
        client.subscribe([(topic, 1) for topic in self._subscriptions()])  # a lost session forgets them
        self._publish_status("stopping" if self._draining else "online", None)
        self.publish_discovery()
        self.core.notifier.status(f"serving {model_name(self.core.config)} on {self.core.describe()}")

    def _subscriptions(self) -> list[str]:
        topics = self.topics.subscriptions
        return topics + ([f"{self.config.topics.discovery_prefix}/status"] if self.config.topics.discovery else [])

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        was, self._connected = self._connected, False
        if was and not self._draining:
            log.warning("disconnected from the broker (%s); reconnecting", reason)
            self.core.notifier.status(f"serving {model_name(self.core.config)} on {self.core.describe()}")

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        quick_ack(client)
        try:
            self._dispatch(message)
        except Exception:  # a bug: still one answer, and never paho's network thread killed
            log.exception("handling a message on %s failed", message.topic)
            self._answer_failure(message)

    def _dispatch(self, message: mqtt.MQTTMessage) -> None:
        is_request, owner = self.topics.owner_of(message.topic, "request")
        if is_request:
            self._take_request(message, owner)
            return
        is_cancel, owner = self.topics.owner_of(message.topic, "cancel")
        if is_cancel:
            self._take_cancel(message.payload, owner)
        elif discovery.is_ha_birth(message.topic, message.payload,
                                   discovery_prefix=self.config.topics.discovery_prefix):
            self._home_assistant_born()
        self.ledger.ack(self._delivery(message))

    # --- requests in ----------------------------------------------------------------------------

    def _take_request(self, message: mqtt.MQTTMessage, owner: str | None) -> None:
        """Read, deduplicate, queue: every path ends in one answer (or a redelivery folded in)."""
        if self._draining:
            return  # not acknowledged: the broker hands it to our next session (or another daemon)
        delivery = self._delivery(message)
        incoming = protocol.read_request(message.payload, message.properties, owner, self.config.limits,
                                         self.config.topics.reply_prefix)
        state = self.ledger.duplicate(incoming.reply.key, delivery, message.dup)
        if state is not None:
            log.info("request %s: a repeat (dup flag %s) of one %s", incoming.reply.request_id, message.dup, state)
            if message.dup:
                return
            incoming = incoming.repeated(state)
        if incoming.error is not None:
            self._refuse(incoming.reply, incoming.error, delivery)
        else:
            self._accept(incoming, delivery)

    def _accept(self, incoming: protocol.Incoming, delivery: Delivery) -> None:
        key = incoming.reply.key or f"\0{incoming.request.id}"
        answer = MqttAnswer(self, incoming.reply, key, list(delivery))
        self.ledger.add(key, answer)
        expires_at = time.monotonic() + incoming.expiry_s if incoming.expiry_s is not None else None
        try:
            self.core.submit(incoming.request, answer, front_end=self.name, stream=incoming.stream,
                             expires_at=expires_at, owner=incoming.reply.owner)
        except Busy as exc:
            self.ledger.drop(key)
            self._refuse(incoming.reply, exc, answer.mids)

    def _take_cancel(self, payload: bytes, owner: str | None) -> None:
        """Cancel the sender's own request: {prefix}/cancel/<client id> reaches only that client's jobs."""
        try:
            request_id = protocol.read_cancel(payload, self.config.limits)
        except BadRequest as exc:
            log.warning("ignoring a cancel without an id: %s", exc)
            return
        jobs = self.core.jobs_of(owner, request_id)
        for job in jobs:
            self.core.cancel(job)
        log.info("cancel %s from %s: %d request(s)", request_id, owner or "an anonymous client", len(jobs))

    # --- answers out ------------------------------------------------------------------------------

    def _refuse(self, reply: Reply, error: EdgekitError, delivery: Delivery) -> None:
        """An error at intake: answered and acknowledged, never remembered (the client may fix and retry)."""
        self.core.metrics.error(error.code, self.name)
        if reply.topic is None:
            log.warning("request %s refused (%s: %s); no usable reply topic, told %s", reply.request_id,
                        error.code, error, self.topics["errors"])
        payload = protocol.error_message(reply.request_id, error.code, str(error))
        self._send_final(reply, payload, lambda: self.ledger.ack(delivery))

    def answer(self, answer: MqttAnswer, job: Job, outcome: Outcome) -> None:
        """A job's final message: remembered and acknowledged once the broker has the answer.

        Remembered only then: a process killed between remembering and the broker's PUBACK lost the
        answer, and its redelivered request was refused as a duplicate (issue 10's SIGKILL test).

        Anything failing here is answered ``internal``; if even that fails, the request is
        acknowledged (and logged) so that it is never redelivered to fail forever.
        """
        try:
            payload = self._final_payload(job, outcome)
            remember = outcome.code not in NOT_JOURNALED and answer.reply.key is not None
            self._send_final(answer.reply, payload, lambda: self._confirmed(answer.key, answer, remember),
                             flow_key=answer.key if remember else None)
        except Exception:
            log.exception("request %s: answering it failed", job.request_id)
            try:
                payload = protocol.error_message(job.request_id, "internal", "the daemon failed to answer")
                self._send_final(answer.reply, payload, lambda: self.ledger.commit(answer.key, answer, False))
            except Exception:
                log.exception("request %s: even the internal error failed; acknowledged unanswered", job.request_id)
                self.ledger.commit(answer.key, answer, False)

    def _confirmed(self, key: str, pending: Pending, remember: bool) -> None:
        """The broker has the answer (PUBCOMP): journal it (so a redelivery is a duplicate), then acknowledge."""
        if remember:
            crash_point("pubcomp")
            self.journal.record(key)
            crash_point("done")
        self.ledger.commit(key, pending, remember)

    def _final_payload(self, job: Job, outcome: Outcome) -> bytes:
        if outcome.code == "result":
            return protocol.result_message(job.request_id, outcome.result, self.config.device_id, outcome.queue_ms)
        return protocol.error_message(job.request_id, outcome.code, outcome.message)

    def _answer_failure(self, message: mqtt.MQTTMessage) -> None:
        """A message whose handling raised: answer internal on {node}/errors if we can, then acknowledge it."""
        delivery = self._delivery(message)
        try:
            correlation = message_property(message, "CorrelationData")
            reply = Reply(None, correlation, correlation.hex() if correlation else "?")
            payload = protocol.error_message(reply.request_id, "internal", "the daemon failed to handle it")
            self._send_final(reply, payload, lambda: self.ledger.ack(delivery))
        except Exception:
            log.exception("answering the failure failed too; acknowledging the message")
            self.ledger.ack(delivery)

    def _send_final(self, reply: Reply, payload: bytes, on_confirmed: Any, flow_key: str | None = None) -> None:
        """A final message; on_confirmed runs once the broker has it (sent again if refused for quota).

        With ``flow_key`` (an answer to remember) at QoS 2, each step journaled under that key
        so that a restart finishes the flow instead of answering again; others at QoS 1.
        """
        if flow_key is None:
            self.send(reply, payload, on_confirmed)
        else:
            topic = reply.topic or self.topics["errors"]
            self.outbox.send(self._flow_message(flow_key, topic, payload, reply.correlation, on_confirmed))

    def _flow_message(self, key: str, topic: str, payload: bytes, correlation: bytes | None,
                      on_confirmed: Any) -> Message:
        """A final answer at QoS 2 whose flow is journaled under ``key`` and the packet id it goes with."""
        def sent(mid: int) -> None:
            self.journal.sent(Flow(key, mid, topic, payload, correlation))
            crash_point("sent")
        return Message(topic, payload, properties=publish_properties(correlation), qos=2, before_send=sent,
                       on_confirmed=on_confirmed)

    def send(self, reply: Reply, payload: bytes, on_confirmed: Any = None) -> None:
        """Chunks (and answers not remembered) at QoS 1: a repeated chunk has the same seq, and clients keep
        the first of each."""
        topic = reply.topic or self.topics["errors"]
        self.outbox.send(Message(topic, payload, properties=publish_properties(reply.correlation),
                                 on_confirmed=on_confirmed))

    def _delivery(self, message: mqtt.MQTTMessage) -> Delivery:
        return self.ledger.delivery(message.qos, message.mid)

    # --- status, discovery, metrics ------------------------------------------------------------------

    def _publish_status(self, state: str, reason: str | None) -> None:
        self.outbox.send(announce.status(self.core.config, self.topics, state, reason, self.core.engine))

    def publish_discovery(self) -> None:
        with self._discovery_lock:
            self._last_discovery, self._discovery_due = time.monotonic(), False
        for message in announce.discovery_configs(self.core.config, self.topics, self.core.engine):
            self.outbox.send(message)

    def _home_assistant_born(self) -> None:
        """Re-announce on Home Assistant's birth, at most every DISCOVERY_EVERY_S (the configs are retained)."""
        with self._discovery_lock:
            wait = self._last_discovery + DISCOVERY_EVERY_S - time.monotonic()
            if wait > 0 and self._discovery_due:
                return
            self._discovery_due = wait > 0
        if wait <= 0:
            self.publish_discovery()
        else:
            timer = threading.Timer(wait, self.publish_discovery)
            timer.daemon = True
            timer.start()

    def _publish_metrics_every(self) -> None:
        while not self._stopped.wait(self.config.daemon.metrics_interval_s):
            if self.client.is_connected():
                snapshot = self.core.snapshot()
                self.outbox.send(announce.metrics(self.topics, snapshot))
