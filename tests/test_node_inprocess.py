"""The fast tier: a real Node over the in-process broker (bus/inprocess.py), no mosquitto, no process.

Receive, validate, dedupe, commit, retry and the outbox are the Node's own logic; here each is
checked in milliseconds. The same behaviours over a real broker stay in test_failures.py,
test_bus_durability.py, test_acl.py and test_deadletters.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES_DIR, read_lines
from failing_node import Fragile

from bus import codec
from bus.config import Settings, load_settings
from bus.contract import UndeclaredEvent
from bus.envelope import JSON, MSGPACK, Event
from bus.inprocess import NOT_AUTHORIZED, InProcessBroker
from bus.node import REFUSED, Node
from bus.topics import health_topic, topic_for
from bus.transport import Session, Will

DEVICE = "edge1"
SCAN_DONE = topic_for(DEVICE, "scan.done")
RETRYING = "Message keeps failing, retrying"


class Notes(Fragile):
    """Fragile (tests/failing_node.py) without a journal to catch up from: `refused.mp4` is refused
    after writing a row and emitting, a `locked*.mp4` meets a lock while `<home>/locked` exists."""

    catchup = False

    def notes(self) -> list[str]:
        return [row[0] for row in self.store.execute("SELECT name FROM notes ORDER BY name")]

    @property
    def lock(self) -> Path:
        return Path(self.settings.home, "locked")


def settings_for(home: Path) -> Settings:
    return load_settings(
        {
            "VV_HOME": str(home),
            "VV_DEVICE": DEVICE,
            "VV_BUS_RETRY_MIN_S": "0.005",
            "VV_BUS_RETRY_MAX_S": "0.01",
            "VV_BUS_RETRY_ALERT_AFTER": "2",
            "VV_MQTT_RECONNECT_MIN_S": "0.005",
            "VV_MQTT_RECONNECT_MAX_S": "0.01",
        }
    )


def video_new(name: str, seq: int = 1) -> Event:
    data = json.loads((FIXTURES_DIR / "video.new" / "valid-1.json").read_text())
    data["original_name"] = name
    return Event(
        type="video.new",
        source=f"vv://{DEVICE}/tester",
        device=DEVICE,
        epoch=1,
        seq=seq,
        data=data,
        datacontenttype=MSGPACK,
    )


def inject(broker: InProcessBroker, event: Event) -> None:
    """Publish an envelope as its producer would."""
    envelope = codec.encode(event.to_dict(), event.datacontenttype)
    assert broker.publish(topic_for(event.device, event.type), envelope, event.datacontenttype) is None


def published(broker: InProcessBroker, topic_prefix: str) -> list[Any]:
    """The decoded documents the broker took on topics starting with `topic_prefix`."""
    return [
        codec.decode(m.payload, m.content_type) for m in broker.published if m.topic.startswith(topic_prefix)
    ]


def answers(broker: InProcessBroker) -> list[str]:
    """The ids of the video.new events answered by a scan.done."""
    return [envelope["causationid"] for envelope in published(broker, SCAN_DONE)]


def alerts(broker: InProcessBroker, title: str, status: str = "firing") -> list[dict[str, Any]]:
    return [
        envelope["data"]
        for envelope in published(broker, topic_for(DEVICE, "alert."))
        if envelope["data"]["title"] == title and envelope["data"]["status"] == status
    ]


async def until(predicate: Callable[[], Any], what: str, timeout: float = 2.0) -> Any:
    """Let the node work until `predicate` holds; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.asynccontextmanager
async def started(node: Node) -> AsyncIterator[None]:
    """The node's whole lifecycle (setup, session, graceful stop) inside the test; exit code 0."""
    task = asyncio.create_task(node.main(handle_signals=False))
    await node.wait_connected(2)
    try:
        yield
    finally:
        node.stop()
        assert await asyncio.wait_for(task, 5) == 0


def scenario(test: Callable[[Notes, InProcessBroker], Any]) -> Callable[[Path], None]:
    """Run `test(node, broker)` against a started Notes node over a fresh in-process broker."""

    def run(tmp_path: Path) -> None:
        async def main() -> None:
            broker = InProcessBroker()
            node = Notes(settings_for(tmp_path), transport=broker.transport)
            async with started(node):
                await test(node, broker)

        asyncio.run(main())

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return run


@scenario
async def test_a_valid_event_is_handled_committed_answered_and_acknowledged(
    node: Notes, broker: InProcessBroker
) -> None:
    event = video_new("a.mp4")
    inject(broker, event)
    await until(lambda: answers(broker), "scan.done")
    assert answers(broker) == [event.id] and node.notes() == ["a.mp4"]
    assert broker.unacked(node.client_id) == 0
    assert node.stats.received == 1 and node.stats.handled == 1
    assert await node.flush(1) and node.store.outbox_depth() == 0  # its PUBACK cleared the outbox row


@scenario
async def test_a_schema_failure_is_dead_lettered_with_an_alert_and_never_handled(
    node: Notes, broker: InProcessBroker
) -> None:
    event = video_new("a.mp4")
    del event.data["original_name"]
    inject(broker, event)
    broker.publish(topic_for(DEVICE, "video.new"), b"\xc1 not msgpack", MSGPACK)
    await until(lambda: len(alerts(broker, "Message refused and dead-lettered")) == 2, "two alerts")
    dead = read_lines(node.paths.state / "deadletter" / f"{node.node_name}.jsonl")
    assert len(dead) == 2 and "original_name" in dead[0]["reason"]
    assert node.notes() == [] and answers(broker) == [] and node.stats.dead_letters == 2
    assert broker.unacked(node.client_id) == 0  # refused for good: acknowledged, never redelivered


@scenario
async def test_the_same_event_twice_is_handled_once(node: Notes, broker: InProcessBroker) -> None:
    event = video_new("a.mp4")
    inject(broker, event)
    await until(lambda: node.stats.handled == 1, "the first copy handled")
    inject(broker, event)  # a redelivery, or a replay from the journal
    await until(lambda: node.stats.duplicates == 1, "the second copy seen")
    assert node.notes() == ["a.mp4"] and answers(broker) == [event.id]
    assert node.stats.received == 2 and broker.unacked(node.client_id) == 0


@scenario
async def test_a_handler_failing_mid_batch_rolls_back_only_its_own_message(
    node: Notes, broker: InProcessBroker
) -> None:
    events = [video_new(name, seq) for seq, name in enumerate(["a.mp4", "refused.mp4", "b.mp4"], 1)]
    for event in events:  # delivered before the node runs again: one batch, one transaction
        inject(broker, event)
    await until(lambda: node.stats.received == 3 and node.stats.dead_letters == 1, "the batch")
    assert node.notes() == ["a.mp4", "b.mp4"]  # refused.mp4's row went with its savepoint...
    await until(lambda: len(answers(broker)) == 2, "two answers")
    assert sorted(answers(broker)) == sorted([events[0].id, events[2].id])  # ...and so did its scan.done
    (alert,) = alerts(broker, "Message refused and dead-lettered")
    assert "RejectedMessage: refused on purpose" in alert["message_details"]
    assert broker.unacked(node.client_id) == 0


@scenario
async def test_a_transient_failure_is_retried_unacknowledged_alerted_then_resolved(
    node: Notes, broker: InProcessBroker
) -> None:
    node.lock.touch()
    event = video_new("locked.mp4")
    inject(broker, event)
    await until(lambda: alerts(broker, RETRYING), "the alert after two failed tries")
    assert broker.unacked(node.client_id) == 1 and node.notes() == [] and answers(broker) == []
    assert node.stats.dead_letters == 0
    node.lock.unlink()
    await until(lambda: answers(broker), "the retry that works")
    assert node.notes() == ["locked.mp4"] and answers(broker) == [event.id] and node.stats.failures >= 2
    assert broker.unacked(node.client_id) == 0 and node.stats.dead_letters == 0
    (fired,) = alerts(broker, RETRYING)
    assert "BlockingIOError" in fired["message_details"]
    await until(lambda: alerts(broker, RETRYING, "resolved"), "the alert resolved")


@scenario
async def test_a_refused_publish_stays_in_the_outbox_until_the_broker_takes_it(
    node: Notes, broker: InProcessBroker
) -> None:
    broker.refuse(SCAN_DONE)  # an ACL rendered before the node declared scan.done
    event = video_new("a.mp4")
    inject(broker, event)
    health = health_topic(DEVICE, node.node_name)
    await until(
        lambda: json.loads(broker.retained[health].payload).get("reason") == REFUSED, "health says why"
    )
    assert node.status == "degraded"
    assert node.notes() == ["a.mp4"] and answers(broker) == [] and node.store.outbox_depth() == 1
    broker.allow(SCAN_DONE)  # `vv broker` re-rendered; the next session sends it
    broker.drop(node.client_id)
    await until(lambda: answers(broker), "the event sent after reconnecting")
    assert answers(broker) == [event.id]
    await until(lambda: node.status == "online", "online again")
    assert await node.flush(1) and node.stats.reconnects == 1
    wills = [doc for doc in published(broker, health) if doc["status"] == "offline"]
    assert wills[0]["reason"] == "connection lost (last will)"


@scenario
async def test_emitting_an_undeclared_type_is_refused_before_anything_is_stored(
    node: Notes, broker: InProcessBroker
) -> None:
    with pytest.raises(UndeclaredEvent, match=r"summary\.done"):
        await node.emit("summary.done", {})
    assert node.store.outbox_depth() == 0 and node.stats.emitted == 0
    assert published(broker, topic_for(DEVICE, "summary.done")) == []


def test_the_in_process_broker_keeps_the_mqtt_the_node_relies_on() -> None:
    """Retained on subscribe, one member per $share group, redelivery of what was not acknowledged,
    refusals as PUBACK reason codes, the will of a broken connection."""

    async def main() -> None:
        broker = InProcessBroker()
        broker.publish("vv/d/health/x", b"{}", JSON, retain=True)
        will = Will("vv/d/health/a", b'{"status": "offline"}', JSON, 1)
        a = broker.transport(settings_for(Path("/nonexistent")), Session("a", "a", will))
        b = broker.transport(settings_for(Path("/nonexistent")), Session("b", "b"))
        async with a, b:
            await a.subscribe(["vv/d/health/+", "$share/g/vv/d/video/new"])
            await b.subscribe(["$share/g/vv/d/video/new"])
            retained = await a.receive()
            assert retained.topic == "vv/d/health/x" and retained.retain
            a.ack(retained)
            for n in range(4):
                broker.publish("vv/d/video/new", str(n).encode(), MSGPACK)
            assert a.delivered() == 2 and b.delivered() == 2  # each shared message to one member
            first = await a.receive()
            assert await a.publish_wait("vv/d/x", b"", JSON) is None
            broker.refuse("vv/d/#")
            assert await a.publish_wait("vv/d/x", b"", JSON) == NOT_AUTHORIZED
            broker.allow("vv/d/#")
            broker.drop("a")
            assert not a.connected and broker.retained["vv/d/health/a"].payload == will.payload
        again = broker.transport(settings_for(Path("/nonexistent")), Session("a", "a"))
        async with again:  # the persistent session: both unacknowledged messages come again
            assert [(await again.receive()).payload for _ in range(2)] == [first.payload, b"2"]

    asyncio.run(main())
