"""The Outbox's flow control, with a recording publish in place of paho (the real broker: test_serve_attack.py)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from edgekit.serve.mqtt.acks import Message, Outbox


class Recorder:
    """Stands where paho's Client.publish goes: records each packet and gives it a new packet id."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    def __call__(self, topic: str, payload: bytes, **_: object) -> SimpleNamespace:
        if topic == "too/long":
            raise ValueError("topic too long")
        self.topics.append(topic)
        return SimpleNamespace(mid=len(self.topics))


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
