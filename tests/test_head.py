"""The anchored chain head: signed head documents, auditor values, and the start-up reconciliation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_logline import SIGNER, keys_for, unsigned, write_chain

from nodes.sign.head import (
    ChainHead,
    HeadError,
    check_head,
    genesis_head,
    head_path,
    parse_head,
    read_head,
    reconcile,
    signed_head,
    write_head,
)
from nodes.sign.keys import Ed25519Signer, HmacSigner
from nodes.sign.logline import GENESIS_PREV, logline_hash, read_chain_tail, sign_logline, write_logline

KEYS = keys_for(SIGNER)


def test_a_head_document_round_trips_through_its_file(tmp_path: Path) -> None:
    (logline,) = write_chain(tmp_path / "storage", 1)
    document = signed_head(logline, SIGNER)
    assert {k: document[k] for k in ("device", "seq", "hash", "key_id", "time")} == {
        "device": "edge-01",
        "seq": 1,
        "hash": logline_hash(logline),
        "key_id": SIGNER.key_id,
        "time": logline["created_at"],
    }
    path = head_path(tmp_path / "state")
    write_head(path, document)
    assert path == tmp_path / "state" / "nodes" / "sign" / "chain-head.json"
    head = read_head(path, KEYS, "edge-01")
    assert head == ChainHead("edge-01", 1, logline_hash(logline)) and head.document == document


def forged(document: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**document, **changes}


def test_a_forged_or_foreign_head_is_refused(tmp_path: Path) -> None:
    (logline,) = write_chain(tmp_path / "storage", 1)
    document = signed_head(logline, SIGNER)
    with pytest.raises(HeadError, match=r"signature does not verify with key .*: the head was changed"):
        check_head(forged(document, seq=9), KEYS)
    stranger = Ed25519Signer(bytes(32))
    with pytest.raises(HeadError, match="unknown key id"):
        check_head(signed_head(logline, stranger), KEYS)
    with pytest.raises(HeadError, match=r"not a chain head document: .*'seq' is a required property"):
        check_head({k: v for k, v in document.items() if k != "seq"}, KEYS)
    with pytest.raises(HeadError, match="it is the head of device 'edge-01', not of 'edge-02'"):
        check_head(document, KEYS, device="edge-02")
    path = tmp_path / "head.json"
    path.write_text("{")
    with pytest.raises(HeadError, match="not JSON"):
        read_head(path, KEYS)
    with pytest.raises(FileNotFoundError):
        read_head(tmp_path / "absent.json", KEYS)


def test_a_logline_signature_cannot_pass_for_a_head() -> None:
    logline = sign_logline(unsigned(), SIGNER)
    document = signed_head(logline, SIGNER)
    with pytest.raises(HeadError, match="signature does not verify"):
        check_head({**document, "signature_details": logline["signature_details"]}, KEYS)


def test_an_hmac_head_verifies_with_its_secret() -> None:
    hmac = HmacSigner(bytes(range(32)))
    logline = sign_logline(unsigned(), hmac)
    assert check_head(signed_head(logline, hmac), keys_for(hmac)).seq == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"10:{'a' * 64}", ChainHead(None, 10, "a" * 64)),
        (f" cam-gw-01:3:{'0' * 64}\n", ChainHead("cam-gw-01", 3, "0" * 64)),
    ],
)
def test_an_auditor_head_is_seq_and_hash(text: str, expected: ChainHead) -> None:
    assert parse_head(text) == expected


@pytest.mark.parametrize("text", ["10", f"0:{'a' * 64}", f"10:{'A' * 64}", f"10:{'a' * 63}", "a:b:c", ""])
def test_a_malformed_auditor_head_is_refused(text: str) -> None:
    with pytest.raises(HeadError, match=r"is not \[DEVICE:\]SEQ:HASH"):
        parse_head(text)


def anchored(logline: dict[str, Any]) -> ChainHead:
    return check_head(signed_head(logline, SIGNER), KEYS)


def test_an_anchor_that_matches_the_disk_head_needs_nothing(tmp_path: Path) -> None:
    chain = write_chain(tmp_path, 3)
    outcome = reconcile(anchored(chain[2]), read_chain_tail(tmp_path, "edge-01", 3), KEYS)
    assert (outcome.seq, outcome.hash, outcome.anchor, outcome.problems) == (
        3,
        logline_hash(chain[2]),
        None,
        (),
    )


def test_a_new_device_starts_at_genesis_without_a_word(tmp_path: Path) -> None:
    outcome = reconcile(None, read_chain_tail(tmp_path, "edge-01"), KEYS)
    assert (outcome.seq, outcome.hash, outcome.anchor, outcome.problems) == (0, GENESIS_PREV, None, ())


def test_removed_newest_loglines_continue_from_the_anchor_with_critical(tmp_path: Path) -> None:
    chain = write_chain(tmp_path, 5)
    for path in sorted(tmp_path.rglob("*.logline.json"))[3:]:  # seq 4 and 5
        path.unlink()
    outcome = reconcile(anchored(chain[4]), read_chain_tail(tmp_path, "edge-01", 5), KEYS)
    assert (outcome.seq, outcome.hash, outcome.anchor) == (5, logline_hash(chain[4]), None)
    ((title, details),) = outcome.problems
    assert title == "Chain cut off"
    assert details.startswith(
        f"seqs 4-5 missing from storage: the anchored head is seq 5 (hash {logline_hash(chain[4])}), "
        "the newest LogLine on disk is seq 3; the chain continues from seq 5"
    )


def test_a_replaced_head_logline_is_critical_and_the_anchor_wins(tmp_path: Path) -> None:
    chain = write_chain(tmp_path, 2)
    rival = sign_logline(unsigned(2, logline_hash(chain[0]), created_at="2030-01-01T00:00:00Z"), SIGNER)
    write_logline(next(tmp_path.rglob(f"{chain[1]['video']['id']}.logline.json")).parent, rival)
    outcome = reconcile(anchored(chain[1]), read_chain_tail(tmp_path, "edge-01", 2), KEYS)
    assert (outcome.seq, outcome.hash) == (2, logline_hash(chain[1]))
    assert [title for title, _ in outcome.problems] == ["Chain head replaced"]


def test_loglines_written_after_the_anchor_are_adopted_when_they_verify_and_link(tmp_path: Path) -> None:
    """A crash between a LogLine's write and its head's write: the disk is ahead, rightly."""
    chain = write_chain(tmp_path, 4)
    outcome = reconcile(anchored(chain[1]), read_chain_tail(tmp_path, "edge-01", 2), KEYS)
    assert (outcome.seq, outcome.hash, outcome.anchor, outcome.problems) == (
        4,
        logline_hash(chain[3]),
        chain[3],
        (),
    )


def test_loglines_ahead_that_do_not_continue_the_anchor_are_refused(tmp_path: Path) -> None:
    chain = write_chain(tmp_path, 2)
    forged_next = sign_logline(unsigned(3, "e" * 64), SIGNER)  # signed, but not linked
    write_logline(tmp_path / "forged", forged_next)
    outcome = reconcile(anchored(chain[1]), read_chain_tail(tmp_path, "edge-01", 2), KEYS)
    assert (outcome.seq, outcome.hash, outcome.anchor) == (2, logline_hash(chain[1]), None)
    ((title, details),) = outcome.problems
    assert title == "LogLines beyond the chain head refused"
    assert "seq 3 on disk do not continue the chain from seq 2 (seq 3 does not link to it" in details
    stranger = Ed25519Signer(bytes(32))
    write_logline(tmp_path / "forged", sign_logline(unsigned(3, logline_hash(chain[1])), stranger))
    write_logline(tmp_path / "later", sign_logline(unsigned(4, "f" * 64), SIGNER))
    outcome = reconcile(anchored(chain[1]), read_chain_tail(tmp_path, "edge-01", 2), KEYS)
    assert outcome.seq == 2
    assert (
        "seqs 3-4 on disk do not continue the chain from seq 2 (seq 3 does not verify: unknown key id"
        in (outcome.problems[0][1])
    )


def test_a_missing_head_file_continues_from_the_disk_head_and_re_anchors_it(tmp_path: Path) -> None:
    chain = write_chain(tmp_path, 3)
    outcome = reconcile(None, read_chain_tail(tmp_path, "edge-01"), KEYS)
    assert (outcome.seq, outcome.hash, outcome.anchor) == (3, logline_hash(chain[2]), chain[2])
    ((title, details),) = outcome.problems
    assert title == "Chain head anchor missing"
    assert "continuing from the newest LogLine on disk, seq 3" in details
    assert "cannot be detected on the device" in details


def test_a_refused_head_file_is_critical_and_an_unverified_disk_head_is_not_anchored(tmp_path: Path) -> None:
    write_chain(tmp_path, 1)
    write_logline(tmp_path / "x", sign_logline(unsigned(2, "e" * 64), Ed25519Signer(bytes(32))))
    refused = HeadError("signature does not verify")
    outcome = reconcile(refused, read_chain_tail(tmp_path, "edge-01"), KEYS)
    assert (outcome.seq, outcome.anchor) == (2, None)
    ((title, details),) = outcome.problems
    assert title == "Chain head anchor refused"
    assert details.startswith("the head file is refused (signature does not verify); continuing from")
    assert "not anchored as it does not verify: unknown key id" in details
    empty = reconcile(refused, read_chain_tail(tmp_path / "none", "edge-01"), KEYS)
    assert empty.seq == 0 and "no LogLine on disk: the chain starts at seq 1" in empty.problems[0][1]


def test_the_head_file_is_one_canonical_json_line(tmp_path: Path) -> None:
    (logline,) = write_chain(tmp_path / "storage", 1)
    path = tmp_path / "head.json"
    write_head(path, signed_head(logline, SIGNER))
    text = path.read_text()
    assert text.count("\n") == 1 and json.loads(text)["seq"] == 1


def test_a_genesis_anchor_adopts_seq_1_written_just_before_a_crash(tmp_path: Path) -> None:
    genesis = check_head(genesis_head("edge-01", SIGNER), KEYS, "edge-01")
    assert (genesis.seq, genesis.hash) == (0, GENESIS_PREV)
    fresh = reconcile(genesis, read_chain_tail(tmp_path, "edge-01", 0), KEYS)
    assert (fresh.seq, fresh.anchor, fresh.problems) == (0, None, ())
    (first,) = write_chain(tmp_path, 1)
    crashed = reconcile(genesis, read_chain_tail(tmp_path, "edge-01", 0), KEYS)
    assert (crashed.seq, crashed.anchor, crashed.problems) == (1, first, ())
