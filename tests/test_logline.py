"""LogLine building, canonical bytes, signing, hashing, schema fast path and chain-head recovery."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from bus.fsutil import canonical_json
from bus.schemas import load_schema
from nodes.sign.keys import Ed25519Signer, Ed25519Verifier, HmacSigner, Verifier
from nodes.sign.logline import (
    GENESIS_PREV,
    LogLineError,
    build_logline,
    canonical_bytes,
    hash_with_signature,
    logline_hash,
    logline_path,
    read_chain_tail,
    schema_error,
    sign_logline,
    signed_bytes_in,
    verify_signature,
    whole_canonical_bytes,
    write_logline,
)

SIGNER = Ed25519Signer(bytes(range(32)))
FIXTURES = Path(__file__).resolve().parent.parent / "schemas" / "fixtures" / "logline"


def keys_for(*signers: Ed25519Signer | HmacSigner) -> dict[str, Verifier]:
    return {s.key_id: Ed25519Verifier(s.public_key) if isinstance(s, Ed25519Signer) else s for s in signers}


def unsigned(seq: int = 1, prev: str = GENESIS_PREV, device: str = "edge-01", **extra: Any) -> dict[str, Any]:
    video_id = f"{seq:032x}"
    return build_logline(
        device=device,
        seq=seq,
        prev=prev,
        video={"id": video_id, "path": "/v/clip.mp4", "sha256": "1" * 64, "bytes": 10, "duration_s": 1.5},
        analytic={"path": "/v/analytic.json", "sha256": "2" * 64},
        summary={"path": "/v/summary.json", "sha256": "3" * 64, "text": "a dog", "counts": {"dog": 1}},
        **extra,
    )


def test_build_logline_takes_only_contract_fields_and_can_relativise_paths(tmp_path: Path) -> None:
    video = {
        "id": "a" * 32,
        "path": str(tmp_path / "v.mp4"),
        "sha256": "1" * 64,
        "bytes": 3,
        "duration_s": 2.0,
    }
    logline = build_logline(
        device="d",
        seq=4,
        prev="f" * 64,
        video={**video, "fps": 25.0, "codec": "h264"},
        analytic={"path": str(tmp_path / "analytic.json"), "sha256": "2" * 64, "extra": 1},
        summary={"path": "/elsewhere/summary.json", "sha256": "3" * 64, "text": "t", "counts": {}, "x": 2},
        created_at="2025-01-01T00:00:00Z",
        logline_id="id-1",
        base_dir=tmp_path,
    )
    assert logline["video"] == {**video, "path": "v.mp4", "fps": 25.0}
    assert logline["analytic"] == {"path": "analytic.json", "sha256": "2" * 64}
    assert logline["summary"]["path"] == "/elsewhere/summary.json"  # outside base_dir: kept as given
    assert (logline["logline_version"], logline["id"], logline["seq"]) == (1, "id-1", 4)
    assert "signature_details" not in logline


def test_canonical_bytes_follow_the_contract() -> None:
    signed = sign_logline(unsigned(), SIGNER)
    expected = json.dumps(
        {k: v for k, v in signed.items() if k != "signature_details"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    assert canonical_bytes(signed) == expected == canonical_bytes(unsigned_copy(signed))
    assert logline_hash(signed) == hashlib.sha256(canonical_json(signed)).hexdigest()
    with pytest.raises(ValueError):
        canonical_bytes({**signed, "video": {**signed["video"], "duration_s": float("nan")}})


def unsigned_copy(signed: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in signed.items() if k != "signature_details"}


def test_sign_then_verify_and_any_change_breaks_it() -> None:
    keys = keys_for(SIGNER)
    signed = sign_logline(unsigned(), SIGNER)
    assert signed["signature_details"]["alg"] == "ed25519"
    assert signed["signature_details"]["key_id"] == SIGNER.key_id
    assert verify_signature(signed, keys) is None
    changed = copy.deepcopy(signed)
    changed["summary"]["text"] = "a cat"
    assert "signature does not verify" in (verify_signature(changed, keys) or "")
    assert "unknown key id" in (verify_signature(signed, {}) or "")
    assert verify_signature(unsigned_copy(signed), keys) == "no signature_details"
    wrong_alg = copy.deepcopy(signed)
    wrong_alg["signature_details"]["alg"] = "hmac-sha256"
    assert "does not match key" in (verify_signature(wrong_alg, keys) or "")


def test_hmac_round_trip() -> None:
    signer = HmacSigner(bytes(32))
    signed = sign_logline(unsigned(), signer)
    assert signed["signature_details"]["alg"] == "hmac-sha256"
    assert verify_signature(signed, keys_for(signer)) is None
    assert verify_signature(signed, keys_for(HmacSigner(bytes([1] * 32)))) is not None  # other secret


def test_hash_covers_the_signature() -> None:
    signed = sign_logline(unsigned(), SIGNER)
    other = copy.deepcopy(signed)
    other["signature_details"]["signature"] = HmacSigner(bytes(32)).sign(b"x")
    assert canonical_bytes(signed) == canonical_bytes(other)
    assert logline_hash(signed) != logline_hash(other)


@pytest.mark.parametrize(
    "device", ["edge-01", 'we"ird,"summary":{}', "caf\u00e9 \\ edge", ',"summary":'], ids=range(4)
)
def test_verify_splices_the_signature_into_the_same_hash(device: str) -> None:
    logline = unsigned(device=device)
    logline["summary"]["text"] = ',"summary":{"x":1}, "signature_details" \u2713'
    signed = sign_logline(logline, SIGNER)
    assert hash_with_signature(canonical_bytes(signed), signed["signature_details"]) == logline_hash(signed)
    assert signed_bytes_in(whole_canonical_bytes(signed), signed["signature_details"]) == canonical_bytes(
        signed
    )


def test_sign_refuses_schema_invalid_loglines() -> None:
    bad = unsigned()
    bad["video"]["id"] = "not-hex"
    with pytest.raises(LogLineError, match="video/id"):
        sign_logline(bad, SIGNER)
    with pytest.raises(LogLineError, match="not canonical JSON"):
        sign_logline({**unsigned(), "seq": float("inf")}, SIGNER)


def fixture_files(prefix: str) -> list[Path]:
    files = sorted(FIXTURES.glob(f"{prefix}-*.json"))
    assert files, f"no {prefix} fixtures in {FIXTURES}"
    return files


@pytest.mark.parametrize("path", fixture_files("valid"), ids=lambda p: p.name)
def test_valid_fixtures_pass(path: Path) -> None:
    assert schema_error(json.loads(path.read_text())) is None


@pytest.mark.parametrize("path", fixture_files("invalid"), ids=lambda p: p.name)
def test_invalid_fixtures_fail_with_a_located_reason(path: Path) -> None:
    reason = schema_error(json.loads(path.read_text()))
    assert reason is not None and ":" in reason


def mutations(doc: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """Every single-spot change of `doc`: drop a key, add one, and put each leaf to every JSON type."""
    found: list[tuple[str, Any]] = []
    if isinstance(doc, dict):
        found.append(("/".join(path) + "+extra", {**doc, "extra": 1}))
        for key, value in doc.items():
            found.append(("/".join((*path, key)) + "-dropped", {k: v for k, v in doc.items() if k != key}))
            for name, changed in mutations(value, (*path, key)):
                found.append((name, {**doc, key: changed}))
    else:
        replacements: tuple[Any, ...] = (None, True, 0, -1, 1.0, 2.5, "", "x", [], {}, "A" * 200, 10**20)
        for replacement in replacements:
            found.append(("/".join(path) + f"={replacement!r:.20}", replacement))
    return found


def test_schema_check_agrees_with_jsonschema_on_every_mutation() -> None:
    """The compiled hot path (fastjsonschema) never accepts what draft 2020-12 jsonschema rejects."""
    validator = Draft202012Validator(load_schema("logline"))
    for base in [json.loads(path.read_text()) for path in fixture_files("valid")]:
        cases = mutations(base)
        assert len(cases) > 250
        for name, doc in cases:
            assert (schema_error(doc) is None) == validator.is_valid(doc), name


def write_chain(storage: Path, count: int, device: str = "edge-01") -> list[dict[str, Any]]:
    chain, prev = [], GENESIS_PREV
    for seq in range(1, count + 1):
        signed = sign_logline(unsigned(seq, prev, device), SIGNER)
        write_logline(storage / "2025" / "01" / f"{seq:02d}" / signed["video"]["id"], signed)
        prev = logline_hash(signed)
        chain.append(signed)
    return chain


def test_write_logline_names_the_file_by_video_id(tmp_path: Path) -> None:
    signed = sign_logline(unsigned(), SIGNER)
    path = write_logline(tmp_path, signed)
    assert path == logline_path(tmp_path, signed["video"]["id"])
    assert path.name == f"{signed['video']['id']}.logline.json"
    assert json.loads(path.read_text()) == signed


def test_chain_tail_after_a_crash_between_write_and_publish(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    empty = read_chain_tail(storage, "edge-01")
    assert (empty.seq, empty.hash, empty.loglines) == (0, GENESIS_PREV, {})
    chain = write_chain(storage, 3)  # seq 3 written, its event never published: still the head
    write_chain(tmp_path / "storage" / "other", 5, device="edge-02")
    tail = read_chain_tail(storage, "edge-01")
    assert (tail.seq, tail.hash, tail.loglines) == (3, logline_hash(chain[2]), {3: chain[2]})
    assert read_chain_tail(storage, "edge-02").seq == 5


def test_chain_tail_refuses_to_guess(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    write_chain(storage, 2)
    broken = storage / "x" / "broken.logline.json"
    broken.parent.mkdir()
    broken.write_text("{")
    with pytest.raises(LogLineError, match=r"unreadable LogLines: .*broken\.logline\.json"):
        read_chain_tail(storage, "edge-01")
    broken.unlink()
    rival = sign_logline(unsigned(2, "e" * 64), SIGNER)
    write_logline(storage / "rival", rival)
    with pytest.raises(LogLineError, match="two different LogLines claim seq 2"):
        read_chain_tail(storage, "edge-01")


def test_a_signature_with_spare_bits_set_is_refused() -> None:
    """Same signature bytes, different text: would give a valid LogLine another hash (chain malleability)."""
    signed = sign_logline(unsigned(), SIGNER)
    text = signed["signature_details"]["signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = text[-3]  # 64 bytes = 85 characters + "==": the last one carries 4 spare bits
    twin = text[:-3] + alphabet[alphabet.index(last) | 1] + "=="
    assert base64.b64decode(twin) == base64.b64decode(text) and twin != text
    forged = copy.deepcopy(signed)
    forged["signature_details"]["signature"] = twin
    assert verify_signature(forged, keys_for(SIGNER)) == "signature is not in canonical base64"


def test_chain_tail_keeps_only_the_loglines_above_the_seq_asked_for(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    chain = write_chain(storage, 5)
    assert read_chain_tail(storage, "edge-01").loglines == {5: chain[4]}
    assert read_chain_tail(storage, "edge-01", above=2).loglines == {3: chain[2], 4: chain[3], 5: chain[4]}
    assert read_chain_tail(storage, "edge-01", above=7).loglines == {5: chain[4]}  # the newest, always
    assert read_chain_tail(tmp_path / "empty", "edge-01", above=0).loglines == {}
