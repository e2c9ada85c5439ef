"""Key store: generation, permissions, active key, signers/verifiers, export and `vv keys`."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import nacl.signing
import pytest

from nodes.cli import keys as keys_cli
from nodes.sign.keys import (
    Ed25519Signer,
    Ed25519Verifier,
    HmacSigner,
    KeyStore,
    KeyStoreError,
    load_public_keys,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_ed25519_writes_a_private_key_and_derives_its_id(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    info = store.generate("ed25519")
    public = base64.b64decode(info.public_key or "")
    assert info.key_id == hashlib.sha256(public).hexdigest()[:16]
    assert info.path == tmp_path / "keys" / f"{info.key_id}.key"
    assert mode(info.path) == 0o600
    assert mode(tmp_path / "keys") == 0o700
    assert info.active and store.active_key_id() == info.key_id
    signer = store.signer()
    assert signer.key_id == info.key_id and signer.alg == "ed25519"
    signature = base64.b64decode(signer.sign(b"hello"))
    nacl.signing.VerifyKey(public).verify(b"hello", signature)  # raises if it does not verify


def test_hmac_key_id_is_the_hash_of_the_secret_hash_and_is_never_exported(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    info = store.generate("hmac-sha256")
    seed = base64.b64decode(json.loads(info.path.read_text())["seed"])
    assert len(seed) == 32
    assert info.key_id == hashlib.sha256(hashlib.sha256(seed).digest()).hexdigest()[:16]
    assert info.public_key is None and store.public_keys() == {}
    signer = store.signer()
    assert isinstance(signer, HmacSigner)
    assert store.verifiers()[info.key_id].verify(b"data", base64.b64decode(signer.sign(b"data")))
    assert not store.verifiers()[info.key_id].verify(b"datA", base64.b64decode(signer.sign(b"data")))


def test_several_keys_one_active(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    first = store.generate()
    second = store.generate("hmac-sha256", activate=False)
    assert [(i.key_id, i.active) for i in store.list()] == [(first.key_id, True), (second.key_id, False)]
    assert store.signer().key_id == first.key_id
    assert store.signer(second.key_id).key_id == second.key_id  # sign.key_id picks another key
    assert set(store.verifiers()) == {first.key_id, second.key_id}
    assert set(store.public_keys()) == {first.key_id}


def test_signer_errors_say_what_is_wrong(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    with pytest.raises(KeyStoreError, match=r"no active signing key.*vv keys generate"):
        store.signer()
    info = store.generate()
    with pytest.raises(KeyStoreError, match="0123456789abcdef not found"):
        store.signer("0123456789abcdef")
    with pytest.raises(KeyStoreError, match=r"is ed25519, but sign\.alg asks for hmac-sha256"):
        store.signer(alg="hmac-sha256")
    info.path.chmod(0o644)
    with pytest.raises(KeyStoreError, match="0644, open to others: run `chmod 600"):
        store.signer()
    info.path.chmod(0o600)
    (tmp_path / "keys").chmod(0o755)
    with pytest.raises(KeyStoreError, match="chmod 700"):
        store.signer()


def test_broken_or_misnamed_key_files_are_refused(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    info = store.generate()
    moved = tmp_path / "0000000000000000.key"
    info.path.rename(moved)
    with pytest.raises(KeyStoreError, match=f"holds key {info.key_id}: rename it"):
        store.list()
    moved.write_text("not json")
    with pytest.raises(KeyStoreError, match="not a vv key file"):
        store.list()
    moved.write_text(json.dumps({"alg": "ed25519", "seed": base64.b64encode(b"short").decode()}))
    with pytest.raises(KeyStoreError, match="32 bytes"):
        store.list()


def test_load_public_keys_from_export_file_and_directories(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys")
    ed = store.generate()
    hm = store.generate("hmac-sha256", activate=False)
    export = tmp_path / "audit" / "edge-01.json"
    export.parent.mkdir()
    export.write_text(json.dumps(store.public_keys()))
    from_file = load_public_keys(export)
    assert list(from_file) == [ed.key_id] and isinstance(from_file[ed.key_id], Ed25519Verifier)
    assert list(load_public_keys(export.parent)) == [ed.key_id]
    assert set(load_public_keys(tmp_path / "keys")) == {ed.key_id, hm.key_id}  # a key store works too


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected the JSON of `vv keys export`"),
        ('{"0123456789abcdef": "!!!"}', "not a base64 32-byte Ed25519 public key"),
        ('{"0123456789abcdef": "' + base64.b64encode(bytes(32)).decode() + '"}', "does not match its key"),
    ],
)
def test_load_public_keys_rejects_bad_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyStoreError, match=message):
        load_public_keys(path)


def test_load_public_keys_rejects_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="no such key file or directory"):
        load_public_keys(tmp_path / "nope.json")
    with pytest.raises(KeyStoreError, match="no exported public keys"):
        load_public_keys(tmp_path)


def test_signers_are_deterministic_from_the_seed() -> None:
    seed = bytes(range(32))
    assert Ed25519Signer(seed).key_id == Ed25519Signer(seed).key_id
    assert Ed25519Signer(seed).sign(b"x") == Ed25519Signer(seed).sign(b"x")
    assert HmacSigner(seed).key_id != Ed25519Signer(seed).key_id


def test_vv_keys_cli_generate_list_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VV_HOME", str(tmp_path))
    assert keys_cli.main(["generate"]) == 0
    key_id = capsys.readouterr().out.strip()
    assert mode(tmp_path / "keys" / f"{key_id}.key") == 0o600
    assert keys_cli.main(["generate", "--alg", "hmac-sha256", "--no-activate"]) == 0
    hmac_id = capsys.readouterr().out.strip()

    assert keys_cli.main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["key_id"], k["alg"], k["active"]) for k in listed] == [
        (key_id, "ed25519", True),
        (hmac_id, "hmac-sha256", False),
    ]
    assert keys_cli.main(["list"]) == 0
    assert f"{key_id}  ed25519" in capsys.readouterr().out

    assert keys_cli.main(["export"]) == 0
    out, err = capsys.readouterr()
    assert f"not exported: {hmac_id} (hmac-sha256 keys are secret)" in err
    exported = tmp_path / "export.json"
    exported.write_text(out)
    assert list(load_public_keys(exported)) == [key_id]


def test_vv_keys_export_without_ed25519_keys_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VV_HOME", str(tmp_path))
    assert keys_cli.main(["export"]) == 1
    assert "no Ed25519 keys" in capsys.readouterr().err
    monkeypatch.setenv("VV_SIGN_ALG", "hmac-sha256")  # generate follows sign.alg by default
    assert keys_cli.main(["generate"]) == 0
    assert keys_cli.main(["export"]) == 1
    monkeypatch.setenv("VV_SIGN_ALG", "rsa")
    assert keys_cli.main(["list"]) == 2
    assert "sign.alg" in capsys.readouterr().err
