"""What a node class declares: its name, the events it consumes (`@on`, `@on_health`) and those it
produces. Read from the class alone, without starting it: `vv broker` renders each node's
credential and ACL from `grant`, and a running node refuses to emit what it did not declare, so the
broker's rights and the node's code cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from bus.broker import Grant
from bus.catchup import replayable
from bus.config import Settings
from bus.envelope import Event
from bus.topics import CATCHUP_REQUEST, catchup_topic, health_topic, subscription, topic_for

HandlerT = TypeVar("HandlerT", bound=Callable[..., Awaitable[None]])
Handler = Callable[[Event], Awaitable[None]]
HealthHandler = Callable[[str, Any], Awaitable[None]]


def on(event_type: str) -> Callable[[HandlerT], HandlerT]:
    """Mark a coroutine method as the handler of an event type (`*` one level, `#` the rest)."""

    def mark(func: HandlerT) -> HandlerT:
        func._vv_event_type = event_type  # type: ignore[attr-defined]
        return func

    return mark


def on_health(func: HandlerT) -> HandlerT:
    """Mark a coroutine method `(self, node_name, health_doc)` as the receiver of retained health."""
    func._vv_health = True  # type: ignore[attr-defined]
    return func


class UndeclaredEvent(TypeError):
    """A node emitted an event type missing from its `produces`: the broker's ACL would refuse it."""


class Contract:
    """The declarations of a node class; `Node` builds on it."""

    name: ClassVar[str] = ""
    # Event types this node publishes (health and alerts need no declaration). The broker's ACL
    # is rendered from it and `emit` refuses anything else, so the two cannot drift apart.
    produces: ClassVar[tuple[str, ...]] = ()
    shared_group: ClassVar[str] = ""  # e.g. "scan": workers of a stage split the load via $share
    catchup: ClassVar[bool] = True  # on every connection, ask the journal for events missed (bus/catchup.py)

    @classmethod
    def _marked(cls, mark: str) -> list[str]:
        """Names of the methods carrying a decorator's mark (`@on`, `@on_health`)."""
        return [attr for attr in dir(cls) if getattr(getattr(cls, attr), mark, None) not in (None, False)]

    @classmethod
    def consumes(cls) -> list[str]:
        """The event-type patterns of the `@on` handlers: what the node subscribes to."""
        return [getattr(cls, attr)._vv_event_type for attr in cls._marked("_vv_event_type")]

    @classmethod
    def catches_up(cls) -> bool:
        """Whether the node asks the journal for missed events on each connection (bus/catchup.py)."""
        return cls.catchup and bool(replayable(cls.consumes()))

    @classmethod
    def publishes(cls) -> tuple[str, ...]:
        """The event types the node may publish: its `produces`, and its catch-up requests."""
        return cls.produces + ((CATCHUP_REQUEST,) if cls.catches_up() else ())

    @classmethod
    def grant(cls, settings: Settings, node: str) -> Grant:
        """The broker rights of `node` (this class's name, or `<name>-<instance>`), from what the
        class declares: publish its `produces`, its own health and alerts; read what it consumes.

        Reads are plain topics even for a shared group: mosquitto checks each delivered message by
        its topic, never the `$share/...` filter.
        """
        device = settings.device
        write = [topic_for(device, t) for t in cls.publishes()]
        write += [health_topic(device, node), topic_for(device, "alert.#")]
        reads = [subscription(device, pattern) for pattern in cls.consumes()]
        if cls._marked("_vv_health"):
            reads.append(subscription(device, "health.*"))
        if cls.catches_up():
            reads.append(catchup_topic(device, node))
        return Grant(settings.mqtt_username(node), tuple(write), tuple(dict.fromkeys(reads)))

    def _check_declared(self, event_type: str) -> None:
        """Refuse an event type the class did not declare (alerts need no declaration)."""
        if event_type not in self.publishes() and not event_type.startswith("alert."):
            name = type(self).__name__
            raise UndeclaredEvent(
                f"{name} emits {event_type!r} but does not declare it: add it to "
                f"{name}.produces and re-render the broker (`vv broker`) so its ACL allows it"
            )

    def _bound_handlers(self) -> dict[str, Handler]:
        """This instance's `@on` handlers by event-type pattern."""
        cls = type(self)
        return {
            getattr(cls, attr)._vv_event_type: getattr(self, attr) for attr in self._marked("_vv_event_type")
        }

    def _bound_health_handlers(self) -> list[HealthHandler]:
        """This instance's `@on_health` receivers."""
        return [getattr(self, attr) for attr in self._marked("_vv_health")]
