"""The Outbox's flow control, with a recording publish in place of paho (the real broker: test_serve_attack.py)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from edgekit.serve.mqtt.acks import Message, Outbox


class Recorder:
    """Stands where paho's Client.publish goes: records each packet and gives it a new packet id."""

    def __init__(self, first_mid: int = 1) -> None:
        self.topics: list[str] = []
        self.qos: list[int] = []
        self.first_mid = first_mid

    def __call__(self, topic: str, payload: bytes, qos: int = 1, before_send=None, **_: object) -> SimpleNamespace:
        if topic == "too/long":
            raise ValueError("topic too long")
        mid = self.first_mid + len(self.topics)
        if before_send is not None:
            before_send(mid)  # as link._Client does: before anything is sent or kept
        self.topics.append(topic)
        self.qos.append(qos)
        return SimpleNamespace(mid=mid)


def settle(check, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not check() and time.monotonic() < end:
        time.sleep(0.01)
    assert check()


def test_no_more_in_flight_than_the_brokers_window_and_quota_refusals_go_again() -> None:
    publish, confirmed = Recorder(), []
    box = Outbox(publish)
    box.start()
    box.set_window(2)
    for i in range(4):
        box.send(Message(f"t{i}", b"x", on_confirmed=lambda i=i: confirmed.append(i)))
    settle(lambda: len(publish.topics) == 2)
    time.sleep(0.3)
    assert publish.topics == ["t0", "t1"]  # the window is full: t2 and t3 wait
    box.published(1, 0x97)  # quota exceeded: t0 is not confirmed, it goes again (after t1's slot frees)
    box.published(2, 0)
    settle(lambda: confirmed == [1] and len(publish.topics) == 4)
    assert publish.topics[2:] == ["t0", "t2"]  # refused messages go first, in order
    box.published(3, 0)
    box.published(4, 0x87)  # not authorized: logged, confirmed, never sent again
    settle(lambda: sorted(confirmed) == [0, 1, 2])
    box.published(5, 0)
    settle(lambda: sorted(confirmed) == [0, 1, 2, 3] and len(box) == 0)
    box.stop()


def test_a_message_paho_refuses_to_send_is_confirmed_not_stuck() -> None:
    publish, confirmed = Recorder(), []
    box = Outbox(publish)
    box.start()
    box.send(Message("too/long", b"x", on_confirmed=lambda: confirmed.append("gone")))
    box.send(Message("fine", b"x"))
    settle(lambda: confirmed == ["gone"] and publish.topics == ["fine"])
    box.stop()


def test_a_qos_2_answer_is_journaled_under_each_packet_id_and_a_resumed_flow_holds_a_window_slot() -> None:
    publish, confirmed, journaled = Recorder(first_mid=100), [], []
    box = Outbox(publish)
    box.start()
    box.set_window(2)
    box.resume(7, Message("resumed", b"x", qos=2, on_confirmed=lambda: confirmed.append("resumed")))
    for name in ("a", "b"):
        box.send(Message(name, b"x", qos=2, before_send=lambda mid, name=name: journaled.append((name, mid)),
                         on_confirmed=lambda name=name: confirmed.append(name)))
    settle(lambda: publish.topics == ["a"])
    time.sleep(0.3)
    assert publish.topics == ["a"] and journaled == [("a", 100)]  # the resumed flow holds the other slot
    box.published(100, 0x97)  # PUBREC quota exceeded: a new flow, journaled under its new packet id
    box.published(7, 0x92)  # PUBCOMP "packet identifier not found": the resumed flow had finished before
    settle(lambda: journaled == [("a", 100), ("a", 101), ("b", 102)])
    assert confirmed == ["resumed"] and publish.qos == [2, 2, 2]
    box.published(101, 0)
    box.published(102, 0)
    settle(lambda: confirmed == ["resumed", "a", "b"] and len(box) == 0)
    box.stop()


def test_a_qos_2_answer_whose_journal_cannot_be_written_goes_at_qos_1() -> None:
    publish, confirmed = Recorder(), []

    def disk_full(mid: int) -> None:
        raise OSError(28, "No space left on device")

    box = Outbox(publish)
    box.start()
    box.send(Message("answer", b"x", qos=2, before_send=disk_full, on_confirmed=lambda: confirmed.append(1)))
    settle(lambda: publish.qos == [1])
    box.published(1, 0)
    settle(lambda: confirmed == [1])
    box.stop()
