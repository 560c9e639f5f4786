"""`edgekit serve`: answer requests arriving over MQTT with one engine, losing none.

Threads: paho's network loop (callbacks: take requests, cancels, Home Assistant's
birth), one worker (runs the engine, publishes chunks and answers), a confirmation
thread (journals and acknowledges once the broker has our answer), and the main
thread (signals, watchdog, metrics, reload, the drain at the end). docs/protocol.md
describes the protocol; jobs.py why acknowledgements wait for the answer.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import paho.mqtt.client as mqtt

from edgekit.engine.records import Chunk, Result
from edgekit.errors import BadRequest, Busy, Cancelled, EdgekitError, EngineError
from edgekit.serve import announce, discovery, protocol
from edgekit.serve.config import ServeConfig, broker_address
from edgekit.serve.engines import EngineLike, check_prompt_tokens, open_engine
from edgekit.serve.jobs import Confirmations, Job, JobQueue, Ledger
from edgekit.serve.journal import Journal
from edgekit.serve.link import (
    connect_properties,
    message_property,
    new_client,
    publish_properties,
    quick_ack,
    release_stale_qos2,
)
from edgekit.serve.metrics import Metrics
from edgekit.serve.notify import Notifier
from edgekit.serve.protocol import Reply, Topics

log = logging.getLogger(__name__)

NOT_JOURNALED = {"busy", "internal"}  # worth a retry with the same id: never remembered as answered
RECEIVE_HEADROOM = 16  # unacked deliveries beyond queue + running, so cancels and busy answers get through
CLEAN_EXIT_WAIT_S = 5.0  # for the last answers' acknowledgements and the offline status


class Daemon:
    """One model served on one MQTT connection; run() returns when a SIGTERM's drain is done."""

    def __init__(self, config: ServeConfig, notifier: Notifier | None = None,
                 reread: Callable[[], ServeConfig] | None = None) -> None:
        """reread: how SIGHUP reads the config again (the file, environment and flags it came from)."""
        self.config = config
        self._reread = reread
        self.topics = Topics.for_device(config.prefix, config.device_id, config.topics.share_group)
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.queue = JobQueue(config.limits.queue_size)
        self.confirmations = Confirmations()
        self.journal: Journal | None = None
        self.engine: EngineLike | None = None
        self.client: mqtt.Client | None = None
        self.ledger: Ledger | None = None
        self._lock = threading.Lock()  # guards _running
        self._engine_lock = threading.Lock()  # held by the worker for a whole request; a reload swaps under it
        self._running: Job | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = False
        self._draining = False
        self._released = False  # the QoS 2 sweep of a previous process's packet ids is done
        self._threads: dict[str, threading.Thread] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def run(self) -> None:
        """Load, connect, serve until SIGTERM/SIGINT, drain, disconnect cleanly."""
        self._install_signals()
        self.start()
        try:
            self._serve()
        finally:
            self.stop()

    def start(self) -> None:
        """Model first (READY means warm), then the broker: requests wait there, not here."""
        self.notifier.status("loading the model")
        self.engine = open_engine(self.config.model)
        try:
            self.journal = Journal(self.config.state_dir / "answered.jsonl", self.config.limits.dedup_window_s)
            self.client = self._new_client()
            self.ledger = Ledger(self.client.ack, self.journal)
        except BaseException:
            self.engine.close()
            raise
        host, port, _tls = broker_address(self.config.broker.url)
        self.client.connect_async(host, port, keepalive=self.config.broker.keepalive_s, clean_start=False,
                                  properties=connect_properties(self.config.broker.session_expiry_s,
                                                                self.config.limits.queue_size + 1 + RECEIVE_HEADROOM))
        self._spawn("mqtt", lambda: self.client.loop_forever(retry_first_connection=True))
        self._spawn("worker", self._work)
        self.confirmations.start()
        name, url = announce.model_name(self.config), self.config.broker.url
        self.notifier.ready(f"serving {name} on {url} as {self.topics.prefix}")

    def request_stop(self) -> None:
        """Signal-safe: only set flags; the main loop does the rest."""
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def stop(self) -> None:
        """The drain: no new work; finish (or cancel) the running request; queued ones stay unacked."""
        if self._draining:
            return
        self._draining = True
        self.notifier.stopping("draining")
        self._publish_status("stopping", "draining")
        self.queue.close()  # queued jobs are never answered here: the broker redelivers them
        self._finish_running(self.config.daemon.drain_timeout_s)
        self.confirmations.wait_empty(CLEAN_EXIT_WAIT_S)
        info = self._publish_status("offline", "stopped")
        announce.wait_published(info, CLEAN_EXIT_WAIT_S)
        self.confirmations.stop()
        self.client.disconnect()  # a normal DISCONNECT: the broker discards the Last Will
        self._threads["mqtt"].join(timeout=CLEAN_EXIT_WAIT_S)
        self.engine.close()
        self.journal.close()
        log.info("stopped cleanly")

    def _serve(self) -> None:
        watchdog_s = self.notifier.watchdog_interval_s
        metrics_s = self.config.daemon.metrics_interval_s
        next_watchdog = next_metrics = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            if self._reload_requested:
                self._reload()
            now = time.monotonic()
            if watchdog_s and now >= next_watchdog:
                next_watchdog = now + watchdog_s
                if self.healthy():
                    self.notifier.watchdog()
            if metrics_s and now >= next_metrics:
                next_metrics = now + metrics_s
                self.publish_metrics()

    def healthy(self) -> bool:
        """Worth a watchdog ping: the engine answers and our threads are alive (the broker may be away)."""
        threads_ok = all(t.is_alive() for t in self._threads.values())
        return threads_ok and self.engine is not None and self.engine.alive()

    def _finish_running(self, timeout_s: float) -> None:
        worker = self._threads["worker"]
        worker.join(timeout=timeout_s)
        if worker.is_alive():
            with self._lock:
                running = self._running
            if running is not None:
                log.warning("drain: cancelling request %s after %.0f s", running.request_id, timeout_s)
                running.cancelled = True
                self.engine.cancel(running.request_id)
            worker.join(timeout=CLEAN_EXIT_WAIT_S)

    def _reload(self) -> None:
        """SIGHUP: read the [model] settings again, load that model, then swap; the MQTT session stays up."""
        self._reload_requested = False
        self.notifier.reloading("reloading the model")
        try:
            model = self._reread().model if self._reread else self.config.model
            new = open_engine(model)
        except EdgekitError as exc:
            log.error("reload failed, still serving %s: %s", announce.model_name(self.config), exc)
            self.notifier.ready(f"reload failed: {exc}")
            return
        with self._engine_lock:
            old, self.engine = self.engine, new
            self.config = replace(self.config, model=model)
        old.close()
        self._publish_status("online", None)
        self.publish_discovery()
        self.notifier.ready(f"serving {announce.model_name(self.config)} (reloaded)")

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def _spawn(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=f"edgekit-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    # --- MQTT callbacks (paho's network thread) ------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        client = new_client(self.config.client_id, self.config.broker, manual_ack=True)
        will = announce.status_payload(self.config, "offline", "lost", self.engine)
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

    def _is_duplicate(self, reply: Reply, delivery: list[tuple[int, int]], dup: bool) -> bool:
        state = self.ledger.duplicate(reply.key, delivery)
        if state is not None:
            log.info("request %s: a duplicate (dup flag %s) of one %s", reply.request_id, dup, state)
        return state is not None

    def _accept(self, incoming: protocol.Incoming, delivery: list[tuple[int, int]], expiry_s: int | None) -> None:
        now = time.monotonic()
        job = Job(incoming, now, now + expiry_s if expiry_s is not None else None, list(delivery))
        self.ledger.add(job)
        try:
            self.queue.put(job)
        except Busy as exc:
            self.ledger.drop(job)
            self._refuse(incoming.reply, exc, job.mids)

    def _take_cancel(self, payload: bytes) -> None:
        try:
            request_id = str(protocol.decode(payload, self.config.limits)["id"])
        except (BadRequest, KeyError) as exc:
            log.warning("ignoring a cancel without an id: %s", exc)
            return
        jobs = self.ledger.with_id(request_id)
        with self._lock:
            running = self._running
        for job in jobs:
            job.cancelled = True
            if job is running:
                self.engine.cancel(request_id)
            elif self.queue.remove(job):
                self._answer(job, protocol.error_message(request_id, "cancelled", "cancelled while queued"),
                             "cancelled")
        log.info("cancel %s: %d request(s)", request_id, len(jobs))

    # --- answers out ------------------------------------------------------------------------------

    def _refuse(self, reply: Reply, error: EdgekitError, delivery: list[tuple[int, int]]) -> None:
        """An error at intake: answered and acknowledged, never remembered (the client may fix and retry)."""
        self.metrics.error(error.code)
        if reply.topic is None:
            log.warning("request %s refused (%s: %s); no reply topic, told %s", reply.request_id, error.code,
                        error, self.topics["errors"])
        info = self._publish(reply, protocol.error_message(reply.request_id, error.code, str(error)))
        self.confirmations.add(info, lambda: self.ledger.ack(delivery))

    def _answer(self, job: Job, payload: bytes, code: str) -> None:
        """A job's final message: remembered first, acknowledged once the broker has the answer."""
        if code != "result":
            self.metrics.error(code)
        remember = code not in NOT_JOURNALED and job.incoming.reply.key is not None
        if remember:
            self.journal.record(job.incoming.reply.key)
        info = self._publish(job.incoming.reply, payload)
        self.confirmations.add(info, lambda: self.ledger.commit(job, remember))

    def _publish(self, reply: Reply, payload: bytes, final: bool = True) -> mqtt.MQTTMessageInfo:
        """Chunks at QoS 1 (a repeat has the same seq); final answers at answer_qos (2: a resend after a
        reconnect is recognised by the broker, not delivered twice)."""
        topic = reply.topic or self.topics["errors"]
        qos = self.config.broker.answer_qos if final else 1
        return self.client.publish(topic, payload, qos=qos, properties=publish_properties(reply.correlation))

    def _delivery(self, message: mqtt.MQTTMessage) -> list[tuple[int, int]]:
        return self.ledger.delivery(message.qos, message.mid)

    # --- the worker ---------------------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self.queue.take()) is not None:
            with self._lock:
                self._running = job
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None

    def _run(self, job: Job) -> None:
        rid = job.request_id
        if job.cancelled:
            self._answer(job, protocol.error_message(rid, "cancelled", "cancelled while queued"), "cancelled")
            return
        if job.expired():
            self._answer(job, protocol.error_message(rid, "expired", "the message expiry passed while queued"),
                         "expired")
            return
        queue_ms = (time.monotonic() - job.received) * 1000
        try:
            with self._engine_lock:
                result = self._generate(job)
        except Cancelled as exc:
            self._answer(job, protocol.error_message(rid, "cancelled", str(exc) or "cancelled"), "cancelled")
        except EdgekitError as exc:
            self._answer(job, protocol.error_message(rid, exc.code, str(exc)), exc.code)
        except Exception as exc:  # a bug: the client still gets a typed answer
            log.exception("request %s failed", rid)
            self._answer(job, protocol.error_message(rid, "internal", f"{type(exc).__name__}: {exc}"), "internal")
        else:
            if result.finish_reason == "cancelled":
                message = f"cancelled after {result.completion_tokens} tokens"
                self._answer(job, protocol.error_message(rid, "cancelled", message), "cancelled")
                return
            self.metrics.served(result)
            self._answer(job, protocol.result_message(rid, result, self.config.device_id, queue_ms), "result")

    def _generate(self, job: Job) -> Result:
        """Run the engine; stream chunks as they come when the request asked for it."""
        reply, request = job.incoming.reply, job.incoming.request
        check_prompt_tokens(self.engine, request, self.config.limits.max_prompt_tokens)
        if not job.incoming.stream:  # only the Result is wanted: no wake-ups for chunks
            request = replace(request, stream_interval_ms=math.inf)
        seq = 0
        for item in self.engine.stream(request):
            if isinstance(item, Result):
                return item
            if job.cancelled:  # a cancel that raced the engine's start
                self.engine.cancel(request.id)
            if job.incoming.stream and isinstance(item, Chunk) and item.text:
                self._publish(reply, protocol.chunk_message(request.id, seq, item), final=False)
                seq += 1
        raise EngineError("the engine's stream ended without a result (a bug in the engine)")

    # --- status, discovery, metrics ------------------------------------------------------------------

    def _publish_status(self, state: str, reason: str | None) -> mqtt.MQTTMessageInfo:
        return announce.publish_status(self.client, self.config, self.topics, state, reason, self.engine)

    def publish_discovery(self) -> None:
        announce.publish_discovery(self.client, self.config, self.topics, self.engine)

    def publish_metrics(self) -> None:
        snapshot = self.metrics.snapshot(len(self.queue), self._running is not None)
        announce.publish_metrics(self.client, self.topics, snapshot)
