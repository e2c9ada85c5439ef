"""The `vv console` service: the fleet link in, the fold into the store, pending actions out as cmds.

One process, one asyncio loop: the fleet link queues each message; the fold takes what is queued
in batches (one store transaction each); a ticker runs the fold's time-driven checks and sends pending actions whenever
the central broker is reachable. It publishes nothing but commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from aiomqtt import MqttError

from bus.config import Settings
from bus.envelope import parse_time
from bus.fleet import FleetConnection, FleetLink, FleetMessage
from nodes.console.actions import command_event
from nodes.console.fold import ACK, Fleet
from nodes.console.registry import Registry
from nodes.console.settings import ConsoleSettings
from nodes.console.store import Action, Change, ConsoleStore, SqliteStore, StoreError
from nodes.console.web.app import Web, bind, serve_web
from nodes.console.web.auth import Users

log = logging.getLogger("vv.console")

MAX_BATCH = 500  # messages folded in one store transaction at most
# what a message that passed its schema can still make the fold raise; a database's own errors
# are not in it (they stop the service, as before batching)
UNFOLDABLE = (KeyError, TypeError, ValueError, AttributeError, IndexError)

STORE_FILE = "console.sqlite"


def store_path(settings: Settings) -> Path:
    return settings.section(ConsoleSettings).home_path(settings.paths.home) / STORE_FILE


def open_store(settings: Settings) -> ConsoleStore:
    """The store the settings name: PostgreSQL by `database_url`, else SQLite under the console's home."""
    dsn = settings.section(ConsoleSettings).database_url
    if not dsn:
        return SqliteStore(store_path(settings))
    try:
        from nodes.console.store_pg import PgStore  # the `postgres` extra: only where it is used
    except ImportError as exc:
        raise StoreError(
            f"console.database_url needs psycopg: pip install 'vv-edge[postgres]' ({exc})"
        ) from None
    return PgStore(dsn)


def store_name(settings: Settings) -> str:
    """Where the store is, for messages (a DSN without its password)."""
    dsn = settings.section(ConsoleSettings).database_url
    if not dsn:
        return str(store_path(settings))
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", dsn))


def connection(settings: Settings) -> FleetConnection:
    console = settings.section(ConsoleSettings)
    return FleetConnection(
        host=console.host,
        port=console.port,
        client_id=f"vv-console-{console.name}",
        username=console.username,
        password=console.password,
        ca=console.ca,
        cert=console.cert,
        key=console.key,
        check_hostname=console.check_hostname,
        keepalive_s=console.keepalive_s,
        session_expiry_s=console.session_expiry_s,
        receive_maximum=console.receive_maximum,
        shared_group=console.shared_group,
        reconnect_min_s=settings.mqtt.reconnect_min_s,
        reconnect_max_s=settings.mqtt.reconnect_max_s,
    )


class ConsoleService:
    def __init__(self, settings: Settings, store: ConsoleStore) -> None:
        self.settings = settings
        self.store = store
        self.registry = Registry(settings.section(ConsoleSettings).registry_path(settings.paths.home))
        console = settings.section(ConsoleSettings)
        self.fleet = Fleet(store, console, self.registry)
        self.link = FleetLink(connection(settings), self._on_message, self._on_reject, self._send_pending)
        self.rejected = 0
        # the web page reads the same store on this loop; the fold's changes feed its live stream
        self.web = Web(store, self.registry, console, Users(console.users_path(settings.paths.home)))
        self.fleet.on_change = self.web.hub.publish
        self._sending = asyncio.Lock()
        self._inbox: asyncio.Queue[tuple[FleetMessage, Callable[[], None]]] = asyncio.Queue()
        self.epoch = 0

    def _on_message(self, message: FleetMessage, done: Callable[[], None]) -> None:
        self._inbox.put_nowait((message, done))

    async def _folding(self) -> None:
        """Fold what has arrived, up to MAX_BATCH messages a transaction (under load the batches grow
        by themselves: the link reads everything waiting before this runs again); each message is
        acknowledged to the broker once its batch committed."""
        while True:
            batch = [await self._inbox.get()]
            while len(batch) < MAX_BATCH and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            now = time.time()
            messages = [message for message, _ in batch]
            self.fold(messages, now)
            for _, done in batch:
                done()
            self.web.ingestion.messages += len(batch)
            self.web.ingestion.backlog = self._inbox.qsize()
            for message in messages:
                if message.event is not None and not message.retained:
                    self.web.ingestion.observe(now - parse_time(message.event.time).timestamp())

    def fold(self, batch: list[FleetMessage], now: float) -> None:
        """One transaction for the batch; if a message in it breaks the fold, each on its own, so
        that one message is dropped (logged, counted) and the others are kept. A database error
        raises: nothing of the batch is acknowledged, the broker sends it again."""
        try:
            self.fleet.receive_batch(batch, now)
            return
        except UNFOLDABLE:
            pass
        for message in batch:  # (a batch of one fails again: a cheap way to name the message)
            try:
                self.fleet.receive(message, now)
            except UNFOLDABLE as exc:
                self._on_reject(
                    f"vv/{message.device}/{message.event_type}", f"the fold failed on it: {exc!r}"
                )

    def _on_reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        self.web.ingestion.rejected += 1
        log.warning("dropped a message on %s: %s (%d dropped so far)", topic, reason, self.rejected)

    async def _send_pending(self) -> None:
        """Send every pending action while connected; an expired one is marked, never sent late.
        Of replicas sharing a database, the one holding the store's sender claim sends."""
        if not self.store.claim_sender():
            return
        async with self._sending:
            for action in self.store.actions(pending=True):
                now = time.time()
                if _expired(action, now):
                    self.store.mark_sent(action.id, now, "")
                    log.warning(
                        "action %d (%s to %s) expired before it could be sent",
                        action.id,
                        action.kind,
                        action.device,
                    )
                    continue
                with self.store.transaction():
                    seq = (self.store.meta(f"seq:{action.device}:{action.kind}") or 0) + 1
                    self.store.set_meta(f"seq:{action.device}:{action.kind}", seq)
                event = command_event(action, self.epoch, seq)
                try:
                    refusal = await self.link.publish(event)
                except MqttError as exc:
                    log.info(
                        "central broker unreachable (%s): %d action(s) wait",
                        exc,
                        len(self.store.actions(pending=True)),
                    )
                    return
                if refusal is not None:  # the broker's ACL or limits: sending again would not help
                    self.store.mark_sent(action.id, time.time(), "")
                    log.error(
                        "action %d (%s to %s) refused by the central broker: %s",
                        action.id,
                        action.kind,
                        action.device,
                        refusal,
                    )
                    continue
                with self.store.transaction():
                    self.store.mark_sent(action.id, time.time(), event.id)
                    if action.kind == ACK:
                        self.fleet.acked(action.device, action.args["dedup_key"], action.author, now)
                log.info(
                    "sent %s to %s for %s",
                    action.kind,
                    action.device,
                    action.author,
                    extra={"event_id": event.id, "action": action.id},
                )

    async def _ticker(self) -> None:
        while True:
            self.fleet.tick(time.time())
            if self.link.connected.is_set():
                await self._send_pending()
            await asyncio.sleep(self.settings.section(ConsoleSettings).tick_s)

    async def run(self, stop: asyncio.Event) -> None:
        with self.store.transaction():
            self.store.lock("epoch")  # replicas starting together take distinct epochs
            self.epoch = (self.store.meta("epoch") or 0) + 1
            self.store.set_meta("epoch", self.epoch)
        self.fleet.start(time.time())
        console = self.settings.section(ConsoleSettings)
        log.info(
            "console %s (epoch %d) on %s:%d, store %s",
            console.name,
            self.epoch,
            console.host,
            console.port,
            store_name(self.settings),
        )
        # the page's port is bound first: a taken one fails here, before anything starts
        sock = bind(console.http_host, console.http_port) if console.http_port else None
        tasks = [
            asyncio.create_task(self.link.run(once=True)),
            asyncio.create_task(self._folding()),
            asyncio.create_task(self._ticker()),
        ]
        if sock is not None:
            log.info("console web page on http://%s:%d/", console.http_host, console.http_port)
            if not self.web.users.path.exists():
                log.warning("no console users yet: add one with `vv console users add NAME --role operator`")
            tasks.append(asyncio.create_task(serve_web(self.web, sock)))
        # what other replicas on a shared database commit reaches this page's live stream too
        loop = asyncio.get_running_loop()

        def from_another_replica(change: Change) -> None:
            loop.call_soon_threadsafe(self.web.hub.publish, change)

        unwatch = self.store.watch(from_another_replica)
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping:
                    task.result()  # the first connection failed: raise it
        finally:
            unwatch()
            for task in [*tasks, stopping]:
                task.cancel()
            for task in [*tasks, stopping]:
                with contextlib.suppress(asyncio.CancelledError, MqttError):
                    await task


def _expired(action: Action, now: float) -> bool:
    return parse_time(action.until).timestamp() <= now


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = open_store(settings)
    try:
        await ConsoleService(settings, store).run(stop)
    finally:
        store.close()
