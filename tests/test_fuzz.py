"""Property tests: whatever arrives on the bus, a node either accepts a valid event or refuses it.

Unit level: any payload in any content type decodes and validates into an `Event`, or raises one
of the rejections `Inbound.receive` (bus/inbound.py) dead-letters; never a crash (RecursionError, TypeError,
OverflowError...). Process level: real scan and sign processes take a few hundred generated
payloads, hostile but close to real events, and stay up with nothing touched outside state/ and
logs/.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import FIXTURES_DIR, VV, Probe, Publisher, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_forged_events import listing, start

from bus import codec, schemas
from bus.envelope import JSON, MSGPACK, Event
from bus.node import RejectedMessage

REJECTIONS = (RejectedMessage, codec.DecodeError, schemas.SchemaError, ValueError)  # as Inbound.receive
CONTENT_TYPES = st.sampled_from([MSGPACK, JSON, None, "text/plain", "", "application/msgpack; v=2"])
EVENT_TYPES = ["video.new", "scan.done", "summary.done", "logline.signed", "video.quarantined"]
# Text aimed at files and terminals. The live-process test swaps "/etc/passwd" for a decoy of its own:
# should a check ever regress, a node there would move the real file.
HOSTILE = ["../../x", "/dev/zero", "\x1b[2J", "a\nb", "", "x" * 70_000, "vv/+/#"]
HOSTILE_TEXT = st.sampled_from(["/etc/passwd", *HOSTILE])


def leaves(hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(),  # NaN and infinities included
        st.text(max_size=30),
        hostile,
        st.binary(max_size=30),
    )


def trees(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=15,
    )


VALUES = trees(leaves(HOSTILE_TEXT))
# JSON adds integers of any size and lone surrogates ("\udcff" escaped), which msgpack cannot carry
JSON_VALUES = trees(
    st.one_of(
        leaves(HOSTILE_TEXT).filter(lambda v: not isinstance(v, bytes)), st.integers(), st.just("\udcff")
    )
)
UNIT = settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def receive(payload: bytes, content_type: str | None) -> Event:
    """What `Inbound.receive` does before a handler sees the message: decode, then build and validate."""
    document = codec.decode(payload, content_type)
    if not isinstance(document, dict):
        raise RejectedMessage(f"payload is a {type(document).__name__}, not an event envelope")
    return Event.from_dict(document)


def check(payload: bytes, content_type: str | None) -> Event | None:
    """The property: a valid Event (that survives its own way out again) or a documented rejection."""
    try:
        document = codec.decode(payload, content_type)
    except codec.DecodeError:
        return None
    for ctype in (JSON, MSGPACK):  # what came in can be written out (journal, replay, dead letters)
        codec.encode(document, ctype)
    with contextlib.suppress(schemas.SchemaError):
        schemas.validate("health", document)  # the path a health topic takes
    try:
        event = receive(payload, content_type)
    except REJECTIONS:
        return None
    again = codec.encode(event.to_dict(), event.datacontenttype)
    assert receive(again, event.datacontenttype) == event
    return event


def envelope(event_type: str, data: Any) -> dict[str, Any]:
    return Event(
        type=event_type, source="vv://edge1/fuzz", device="edge1", epoch=1, seq=1, data=data
    ).to_dict()


def valid_data(event_type: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES_DIR / event_type / "valid-1.json").read_text()))


def places(document: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a document: the spots a mutation can hit."""
    found: list[tuple[Any, Any]] = []
    stack = [document]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for key in keys:
            found.append((node, key))
            stack.append(node[key])
    return found


@st.composite
def near_valid(
    draw: st.DrawFn, values: st.SearchStrategy[Any] = VALUES, hostile: st.SearchStrategy[Any] = HOSTILE_TEXT
) -> dict[str, Any]:
    """A valid envelope of a real event type with one to three values replaced, added or removed."""
    event_type = draw(st.sampled_from(EVENT_TYPES))
    document = envelope(event_type, valid_data(event_type))
    for _ in range(draw(st.integers(1, 3))):
        container, key = draw(st.sampled_from(places(document)))
        action = draw(st.sampled_from(["replace", "replace", "add", "remove"]))
        if action == "remove":
            del container[key]
        elif action == "add" and isinstance(container, dict):
            container[draw(st.text(max_size=10))] = draw(values)
        else:
            container[key] = draw(st.one_of(like(container[key], hostile), values))
    return document


def like(value: Any, hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value of the same JSON type, so that many mutants stay schema-valid and reach the handlers."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(min_value=0, max_value=2**63 - 1)
    if isinstance(value, float):
        return st.floats(min_value=0, max_value=1e12)
    if isinstance(value, str):
        return st.one_of(hostile, st.text(min_size=1, max_size=30))
    return st.just(value)


# ----------------------------------------------------------------- unit level
@settings(UNIT, max_examples=2000)
@given(st.binary(max_size=300), CONTENT_TYPES)
def test_any_bytes_are_an_event_or_a_rejection(payload: bytes, content_type: str | None) -> None:
    check(payload, content_type)


@UNIT
@given(VALUES, CONTENT_TYPES)
def test_any_msgpack_document_is_an_event_or_a_rejection(document: Any, content_type: str | None) -> None:
    check(msgpack.packb(document, use_bin_type=True), content_type)


@UNIT
@given(JSON_VALUES, CONTENT_TYPES)
def test_any_json_document_is_an_event_or_a_rejection(document: Any, content_type: str | None) -> None:
    check(json.dumps(document).encode(), content_type)  # NaN and Infinity tokens included


@UNIT
@given(near_valid(), st.sampled_from([MSGPACK, JSON]))
def test_near_valid_envelopes_are_an_event_or_a_rejection(
    document: dict[str, Any], content_type: str
) -> None:
    try:
        payload = codec.encode(document, content_type)
    except (TypeError, ValueError):  # bytes or NaN in JSON: our encoder sends neither
        return
    check(payload, content_type)


def _deep(opener: bytes, closer: bytes, leaf: bytes, depth: int) -> bytes:
    return opener * depth + leaf + closer * depth


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (msgpack.packb({"a": msgpack.ExtType(5, b"x")}), MSGPACK),  # an extension type
        (b"\xd6\xff" + struct.pack(">I", 10), MSGPACK),  # timestamp 32
        (b"\xd7\xff" + b"\xff" * 8, MSGPACK),  # timestamp 64, nanoseconds out of range
        (b"\xc7\x0c\xff" + b"\x7f" + b"\xff" * 11, MSGPACK),  # timestamp 96, far future
        (b"\xc9\xff\xff\xff\xff\x01", MSGPACK),  # ext 32 declaring 4 GiB
        (b"\xdb\xff\xff\xff\xff", MSGPACK),  # str 32 declaring 4 GiB
        (b"\xc6\xff\xff\xff\xff", MSGPACK),  # bin 32 declaring 4 GiB
        (b"\xdd\xff\xff\xff\xff", MSGPACK),  # array 32 declaring 4 G items
        (b"\xdf\xff\xff\xff\xff", MSGPACK),  # map 32 declaring 4 G pairs
        (b"\x81\x01\x02", MSGPACK),  # an integer key
        (b"\x81\xc4\x01a\x02", MSGPACK),  # a bytes key
        (b"\x81\x91\x01\x02", MSGPACK),  # an array as a key
        (b"\x81\xa1a\xcb" + struct.pack(">d", math.nan), MSGPACK),
        (b"\x81\xa1a\xca" + struct.pack(">f", math.inf), MSGPACK),
        (b"\xa3\xff\xfe\xfd", MSGPACK),  # a str that is not UTF-8
        (msgpack.packb(envelope("video.new", {"video": b"\x00"}), use_bin_type=True), MSGPACK),
        (_deep(b"\x91", b"", b"\xc0", 100), MSGPACK),
        (_deep(b"\x91", b"", b"\xc0", 5000), MSGPACK),
        (_deep(b"\x81\xa1a", b"", b"\xc0", 100), MSGPACK),
        (_deep(b"[", b"]", b"", 100_000), JSON),
        (_deep(b'{"a":', b"}", b"1", 100_000), JSON),
        (_deep(b'{"a":', b"}", b"1", 100_000), None),
        (b'{"a": NaN}', JSON),
        (b'{"a": -Infinity}', JSON),
        (b'{"a": 1e99999}', JSON),
        (b'{"a": ' + b"9" * 5000 + b"}", JSON),
        (b'{"a": ' + b"9" * 30 + b"}", JSON),
        ('{"a": 1}'.encode("utf-16"), JSON),
        (b'{"a": "\xff"}', JSON),
        (b'{"a": "\\udcff"}', JSON),
        (b"", MSGPACK),
        (b"", JSON),
        (b"", None),
        (json.dumps(envelope("video.new", valid_data("video.new"))).encode(), "application/xml"),
    ],
)
def test_decoder_edge_cases_are_refused_not_crashes(payload: bytes, content_type: str | None) -> None:
    assert check(payload, content_type) is None


def test_the_envelope_fixtures_still_decode_in_both_codecs() -> None:
    """The property is not vacuous: real events pass it."""
    for event_type in EVENT_TYPES:
        document = envelope(event_type, valid_data(event_type))
        for content_type in (MSGPACK, JSON):
            assert check(codec.encode(document, content_type), content_type) is not None


# ----------------------------------------------------------------- process level
TOPICS = {"video.new": "scan", "summary.done": "sign"}


def aimed_at(home: Path, decoy: Path) -> st.SearchStrategy[Any]:
    """Values aimed at files: the decoy outside, traversals to it, VV_HOME's own dirs, a FIFO, its hash."""
    storage = home / "storage"
    depth = len(storage.parts) - 1
    digest = hashlib.sha256(decoy.read_bytes()).hexdigest()
    return st.sampled_from(
        [
            str(decoy),
            str(storage) + "/.." * depth + str(decoy),
            f"{storage}/2026/01/01/{'0' * 32}/../../../../../{decoy.name}",
            str(home / "keys"),
            str(home / "state"),
            str(decoy.parent / "fifo"),
            digest,
            digest[:32],
            decoy.stat().st_size,
            *HOSTILE,
        ]
    )


def test_scan_and_sign_survive_hostile_payloads_and_touch_nothing(
    vv: VV, probe: Probe, publisher: Publisher, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    decoy = outside / "passwd"
    decoy.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 64)
    os.mkfifo(outside / "fifo")
    start(vv, probe, "scan", "sign")
    procs = dict(zip(("scan", "sign"), vv.procs, strict=True))
    statuses = {node: probe.health(node)[-1] for node in TOPICS.values()}
    before, outside_before = listing(vv.home), listing(outside)
    aimed = aimed_at(vv.home, decoy)
    sent = dict.fromkeys(TOPICS.values(), 0)

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        st.sampled_from(sorted(TOPICS)),
        st.one_of(near_valid(trees(leaves(aimed)), aimed), st.binary(max_size=200)),
        st.sampled_from([MSGPACK, JSON, None]),
    )
    def publish(event_type: str, document: Any, content_type: str | None) -> None:
        if isinstance(document, dict):
            try:
                payload = codec.encode(document, content_type or MSGPACK)
            except (TypeError, ValueError, OverflowError):  # not sendable in that codec as is
                payload = msgpack.packb(document, use_bin_type=True)
        else:
            payload = document
        assert publisher.raw(f"vv/edge1/{event_type.replace('.', '/')}", payload, content_type) == 0
        sent[TOPICS[event_type]] += 1

    publish()

    def caught_up() -> bool:
        return all(
            (docs := probe.health(node)) and docs[-1]["details"]["received"] >= count
            for node, count in sent.items()
        )

    wait_until(caught_up, timeout=120, what="scan and sign to take every payload")
    for node, proc in procs.items():
        assert proc.poll() is None, f"{node} exited"
        health = probe.health(node)[-1]
        assert (health["status"], health.get("reason")) == (
            statuses[node]["status"],
            statuses[node].get("reason"),
        )
        assert health["details"]["dead_letters"] > 0  # the refusals went where they belong
    assert listing(vv.home) == before  # state/, logs/ (and the test's .out captures) aside
    assert listing(outside) == outside_before
    for log in [vv.home / "logs" / "app.log", *(vv.home / f"{node}.out" for node in procs)]:
        raw = [line for line in log.read_text().splitlines() if not line.isprintable()]
        assert not raw, f"{log.name}: control characters reached the log: {raw[0]!r}"
