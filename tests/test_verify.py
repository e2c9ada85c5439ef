"""`vv verify`: every kind of tampering is INVALID with a precise reason; exit codes 0/1/2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import VV, Probe, Publisher

from bus.artifacts import write_artifact
from bus.fsutil import sha256_bytes
from nodes.cli import verify as verify_verb
from nodes.sign import verify
from nodes.sign.head import ChainHead, head_path, signed_head, write_head
from nodes.sign.keys import KeyStore, Verifier
from nodes.sign.logline import GENESIS_PREV, build_logline, logline_hash, sign_logline, write_logline
from nodes.sign.verify import HeadCheck, verify_paths

REPO = Path(__file__).resolve().parent.parent


class Chain:
    """A device's storage tree of signed LogLines with their real artifact files."""

    def __init__(self, home: Path, alg: str = "ed25519", device: str = "edge-01") -> None:
        self.device = device
        self.store = KeyStore(home / "keys")
        self.store.generate(alg)  # type: ignore[arg-type]
        self.signer = self.store.signer()
        self.storage = home / "storage"
        self.paths: list[Path] = []
        self.loglines: list[dict[str, Any]] = []

    @property
    def keys(self) -> dict[str, Verifier]:
        return self.store.verifiers()

    def unsigned(self, seq: int, prev: str, tag: str = "") -> tuple[Path, dict[str, Any]]:
        video_id = f"{seq:030x}{len(tag):02x}"
        directory = self.storage / "2025" / "01" / "15" / video_id
        video = directory / f"{video_id}.mp4"
        directory.mkdir(parents=True, exist_ok=True)
        content = f"video {seq}{tag}".encode() * 50
        video.write_bytes(content)
        analytic = write_artifact(directory, "analytic.json", {"frames": [{"t": 0.0, "boxes": []}]})
        summary = write_artifact(directory, "summary.json", {"text": f"clip {seq}", "counts": {"dog": seq}})
        logline = build_logline(
            device=self.device,
            seq=seq,
            prev=prev,
            video={
                "id": video_id,
                "path": str(video),
                "sha256": sha256_bytes(content),
                "bytes": len(content),
                "duration_s": 10.0,
            },
            analytic=analytic,
            summary={**summary, "text": f"clip {seq}: a dog", "counts": {"dog": 1}},
            base_dir=directory,
        )
        return directory, logline

    def add(self, count: int) -> Chain:
        for _ in range(count):
            seq = len(self.loglines) + 1
            prev = logline_hash(self.loglines[-1]) if self.loglines else GENESIS_PREV
            directory, logline = self.unsigned(seq, prev)
            signed = sign_logline(logline, self.signer)
            self.paths.append(write_logline(directory, signed))
            self.loglines.append(signed)
        return self

    def export(self, path: Path) -> Path:
        path.write_text(json.dumps(self.store.public_keys()))
        return path


def reasons(report: verify.Report) -> dict[str, list[str]]:
    """Reasons by file name of the INVALID LogLines only."""
    return {Path(r.path).parent.name: r.reasons for r in report.results if not r.valid}


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    return Chain(tmp_path).add(5)


def dir_of(chain: Chain, seq: int) -> str:
    return chain.paths[seq - 1].parent.name


def test_a_signed_chain_is_valid(chain: Chain) -> None:
    report = verify_paths([chain.storage], chain.keys)
    assert report.valid and len(report.results) == 5
    assert (report.artifacts_checked, report.artifacts_absent) == (15, 0)
    summary = report.chains["edge-01"]
    assert (summary.first_seq, summary.last_seq, summary.head) == (1, 5, logline_hash(chain.loglines[-1]))
    assert "5 LogLines: 5 valid, 0 invalid" in report.summary_line()


def test_one_byte_changed_is_invalid_and_only_there(chain: Chain) -> None:
    path = chain.paths[2]
    path.write_bytes(path.read_bytes().replace(b"clip 3: a dog", b"clip 3: a dug"))
    report = verify_paths([chain.storage], chain.keys)
    assert list(reasons(report)) == [dir_of(chain, 3)]
    (reason,) = reasons(report)[dir_of(chain, 3)]
    assert reason.startswith("signature does not verify with key")


def test_a_logline_removed_from_the_middle_is_a_gap(chain: Chain) -> None:
    chain.paths[2].unlink()
    report = verify_paths([chain.storage], chain.keys)
    assert reasons(report) == {dir_of(chain, 4): ["seq 3 missing (gap after 2)"]}
    chain.paths[3].unlink()
    assert reasons(verify_paths([chain.storage], chain.keys)) == {
        dir_of(chain, 5): ["seqs 3-4 missing (gap after 2)"]
    }


def test_two_loglines_swapped_between_their_files(chain: Chain) -> None:
    second, third = chain.paths[1], chain.paths[2]
    content = second.read_bytes()
    second.write_bytes(third.read_bytes())
    third.write_bytes(content)
    found = reasons(verify_paths([chain.storage], chain.keys, check_artifacts=False))
    assert found == {
        dir_of(chain, 2): [
            f"file is named for video {dir_of(chain, 2)} but the LogLine is for video {dir_of(chain, 3)}"
        ],
        dir_of(chain, 3): [
            f"file is named for video {dir_of(chain, 3)} but the LogLine is for video {dir_of(chain, 2)}"
        ],
    }


def test_two_loglines_reordered_and_re_signed(chain: Chain) -> None:
    """Even the key holder cannot reorder history: the chain links give it away."""
    first, second, third = chain.loglines[:3]
    moved_down = sign_logline({**second, "seq": 3}, chain.signer)  # old seq 2 now claims seq 3
    moved_up = sign_logline({**third, "seq": 2}, chain.signer)
    write_logline(chain.paths[1].parent, moved_down)
    write_logline(chain.paths[2].parent, moved_up)
    found = reasons(verify_paths([chain.storage], chain.keys))
    assert found[dir_of(chain, 3)] == ["prev does not match hash of seq 1"]  # now seq 2
    assert found[dir_of(chain, 2)] == [
        f"out of order: prev is the hash of seq 1 ({chain.paths[0]}), not of seq 2"
    ]
    assert found[dir_of(chain, 4)] == ["prev does not match hash of seq 3"]
    assert logline_hash(first) == moved_down["prev"]


def test_swapped_seq_numbers_without_the_key_break_both_signatures(chain: Chain) -> None:
    for index, seq in ((1, 3), (2, 2)):
        doc = json.loads(chain.paths[index].read_text())
        doc["seq"] = seq
        chain.paths[index].write_text(json.dumps(doc))
    found = reasons(verify_paths([chain.storage], chain.keys))
    assert set(found) == {dir_of(chain, 2), dir_of(chain, 3)}
    assert all(r[0].startswith("signature does not verify") for r in found.values())


def test_unknown_key(chain: Chain, tmp_path: Path) -> None:
    stranger = KeyStore(tmp_path / "other")
    stranger.generate()
    report = verify_paths([chain.storage], stranger.verifiers())
    assert len(report.invalid) == 5
    assert all(
        r.reasons == [f"unknown key id {chain.signer.key_id!r} (not in the keys given to verify)"]
        for r in report.results
    )


def test_malformed_json_and_missing_fields_are_invalid_not_tracebacks(chain: Chain) -> None:
    chain.paths[0].write_text('{"seq": 1,')
    doc = json.loads(chain.paths[1].read_text())
    del doc["seq"], doc["video"]["sha256"]
    chain.paths[1].write_text(json.dumps(doc))
    chain.paths[2].write_text(chain.paths[2].read_text().replace('"duration_s":10.0', '"duration_s":NaN'))
    found = reasons(verify_paths([chain.storage], chain.keys))
    assert found[dir_of(chain, 1)][0].startswith("malformed JSON: Expecting")
    assert found[dir_of(chain, 2)] == ["schema: (root): 'seq' is a required property"]
    assert found[dir_of(chain, 3)] == ["malformed JSON: NaN is not allowed in a LogLine"]
    # seq 4 follows an unparseable LogLine: its break is reported there, not on 4
    assert dir_of(chain, 4) not in found


def test_changed_artifacts(chain: Chain) -> None:
    summary = chain.paths[1].parent / "summary.json"
    summary.write_text(summary.read_text().replace("clip 2", "clip 9"))
    video = chain.paths[3].parent / f"{dir_of(chain, 4)}.mp4"
    size = len(video.read_bytes())
    video.write_bytes(video.read_bytes()[:-1])
    report = verify_paths([chain.storage], chain.keys)
    found = reasons(report)
    assert found[dir_of(chain, 2)][0].startswith(f"summary file {summary.resolve()} changed: sha256 ")
    assert found[dir_of(chain, 4)] == [
        f"video file {video.resolve()} has {size - 1} bytes, the LogLine says {size}"
    ]
    assert verify_paths([chain.storage], chain.keys, check_artifacts=False).valid


def test_artifacts_are_found_after_the_tree_is_moved(chain: Chain, tmp_path: Path) -> None:
    moved = tmp_path / "audit-copy"
    shutil.move(chain.storage, moved)  # absolute video paths now dangle: found beside the LogLine
    report = verify_paths([moved], chain.keys)
    assert report.valid and report.artifacts_checked == 15


def test_duplicate_seq_is_reported_on_the_one_the_chain_does_not_continue_from(chain: Chain) -> None:
    directory, rival = chain.unsigned(3, logline_hash(chain.loglines[1]), tag="rival")
    rival_path = write_logline(directory, sign_logline(rival, chain.signer))
    report = verify_paths([chain.storage], chain.keys)
    assert reasons(report) == {rival_path.parent.name: [f"duplicate seq 3 (also in {chain.paths[2]})"]}


def test_prev_mismatch_and_a_bad_genesis(chain: Chain) -> None:
    write_logline(chain.paths[2].parent, sign_logline({**chain.loglines[2], "prev": "0" * 64}, chain.signer))
    write_logline(chain.paths[0].parent, sign_logline({**chain.loglines[0], "prev": "1" * 64}, chain.signer))
    found = reasons(verify_paths([chain.storage], chain.keys))
    assert found == {
        dir_of(chain, 1): ["seq 1 must have prev of 64 zeros"],
        dir_of(chain, 2): ["prev does not match hash of seq 1"],  # seq 1 was re-signed: its hash moved
        dir_of(chain, 3): ["prev does not match hash of seq 2"],
        dir_of(chain, 4): ["prev does not match hash of seq 3"],
    }


def test_identical_copies_are_one_link_and_a_partial_chain_is_fine(chain: Chain, tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    shutil.copy(chain.paths[4], exports / "copy.logline.json")
    assert verify_paths([chain.storage, exports], chain.keys).valid
    later = verify_paths(chain.paths[2:], chain.keys)  # an audit of seq 3..5 only
    assert later.valid and later.chains["edge-01"].first_seq == 3


def test_on_invalid_hook_gets_each_invalid_result(chain: Chain) -> None:
    chain.paths[4].write_text("[]")
    seen: list[dict[str, Any]] = []
    verify_paths([chain.storage], chain.keys, on_invalid=seen.append)
    assert [(Path(s["path"]), s["valid"]) for s in seen] == [(chain.paths[4], False)]
    assert seen[0]["reasons"] == ["schema: (root): [] is not of type 'object'"]


def test_hmac_chain_verifies_with_the_local_store_only(tmp_path: Path) -> None:
    chain = Chain(tmp_path, alg="hmac-sha256").add(3)
    assert verify_paths([chain.storage], chain.keys).valid
    assert chain.store.public_keys() == {}
    assert "unknown key id" in verify_paths([chain.storage], {}).results[0].reasons[0]


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VV_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "nodes.cli.verify", *args], cwd=REPO, env=env, capture_output=True, text=True
    )


def test_cli_exit_codes_in_a_subprocess(chain: Chain, tmp_path: Path) -> None:
    exported = chain.export(tmp_path / "edge-01.keys.json")
    ok = run_cli(str(chain.storage), "--keys", str(exported), home=tmp_path / "elsewhere")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == f"VALID {chain.paths[0]}"
    assert "5 LogLines: 5 valid, 0 invalid" in ok.stdout.splitlines()[-1]
    chain.paths[1].write_text("not json")
    bad = run_cli(str(chain.storage), home=tmp_path)  # the local key store of VV_HOME
    assert bad.returncode == 1
    assert f"INVALID {chain.paths[1]}: malformed JSON" in bad.stdout
    assert "Traceback" not in bad.stderr
    usage = run_cli(str(tmp_path / "missing"), "--keys", str(exported), home=tmp_path)
    assert usage.returncode == 2 and "missing: no such file or directory" in usage.stderr


def test_cli_usage_errors_and_json(
    chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VV_HOME", str(tmp_path / "empty-home"))
    assert verify_verb.main([str(chain.storage)]) == 2
    assert "no keys in" in capsys.readouterr().err
    bad_keys = tmp_path / "bad.json"
    bad_keys.write_text("{")
    assert verify_verb.main([str(chain.storage), "--keys", str(bad_keys)]) == 2
    assert "bad.json: not JSON" in capsys.readouterr().err
    exported = chain.export(tmp_path / "keys.json")
    assert verify_verb.main([str(chain.storage), "--keys", str(exported), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] and report["total"] == 5 and report["chains"]["edge-01"]["last_seq"] == 5
    assert verify_verb.main([str(tmp_path / "empty-home"), "--keys", str(exported)]) == 2
    (tmp_path / "nothing").mkdir()
    assert verify_verb.main([str(tmp_path / "nothing"), "--keys", str(exported)]) == 1
    assert "no LogLines found" in capsys.readouterr().out


def test_large_directories_report_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = Chain(tmp_path)
    prev = GENESIS_PREV
    for seq in range(1, verify_verb.PROGRESS_THRESHOLD + 2):  # plain writes: no artifacts, no fsync
        logline = build_logline(
            device="edge-01",
            seq=seq,
            prev=prev,
            video={"id": f"{seq:032x}", "path": "v.mp4", "sha256": "1" * 64, "bytes": 1, "duration_s": 1},
            analytic={"path": "a.json", "sha256": "2" * 64},
            summary={"path": "s.json", "sha256": "3" * 64, "text": "", "counts": {}},
        )
        signed = sign_logline(logline, chain.signer)
        (chain.storage / f"{seq:032x}.logline.json").parent.mkdir(parents=True, exist_ok=True)
        (chain.storage / f"{seq:032x}.logline.json").write_text(json.dumps(signed))
        prev = logline_hash(signed)
    exported = chain.export(tmp_path / "keys.json")
    assert verify_verb.main([str(chain.storage), "--keys", str(exported), "--no-artifacts"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"verified {verify.BATCH}/201 LogLines (30%)"
    assert err[-1] == "verified 201/201 LogLines (100%)"


def test_a_broken_logline_in_the_middle_is_not_blamed_on_its_successor(chain: Chain) -> None:
    doc = json.loads(chain.paths[2].read_text())
    doc["note"] = "added"  # schema-invalid, but still names its seq
    chain.paths[2].write_text(json.dumps(doc))
    found = reasons(verify_paths([chain.storage], chain.keys))
    assert found == {
        dir_of(chain, 3): ["schema: (root): Additional properties are not allowed ('note' was unexpected)"]
    }
    chain.paths[2].write_text("garbage")  # names nothing: the gap on seq 4 says where seq 3 may be
    found = reasons(verify_paths([chain.storage], chain.keys))
    assert found[dir_of(chain, 4)] == [
        "seq 3 missing (gap after 2; or among the 1 LogLines without a readable seq)"
    ]


def test_worker_processes_give_the_same_report_as_one(tmp_path: Path) -> None:
    chain = Chain(tmp_path).add(300)  # several batches, so the pool really splits the work
    chain.paths[150].write_bytes(chain.paths[150].read_bytes().replace(b'"seq":151', b'"seq":999'))
    one = verify_paths([chain.storage], chain.keys, workers=1)
    two = verify_paths([chain.storage], chain.keys, workers=2)
    assert [(r.path, r.reasons) for r in one.results] == [(r.path, r.reasons) for r in two.results]
    assert not two.valid and len(two.invalid) >= 1


def anchor(chain: Chain, home: Path, logline: dict[str, Any] | None = None) -> Path:
    """The head file the sign node writes after its newest LogLine, in `home`'s state directory."""
    path = head_path(home / "state")
    write_head(path, signed_head(logline or chain.loglines[-1], chain.signer))
    return path


def test_a_removed_newest_logline_is_invalid_against_the_head_file_found_beside_storage(
    chain: Chain, tmp_path: Path
) -> None:
    head_file = anchor(chain, tmp_path)
    head = f"seq 5 (hash {logline_hash(chain.loglines[-1])})"
    ok = run_cli(str(chain.storage), home=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[-3:-1] == [
        f"chain head: {head_file}, the head file beside the storage tree (default; --head for another)",
        f"VALID head {head_file}: edge-01 {head} reached",
    ]
    assert lines[-1].endswith("; chain heads: 1 reached, 0 INVALID")
    chain.paths[4].unlink()
    cut = run_cli(str(chain.storage), home=tmp_path)
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert f"INVALID head {head_file}: chain cut off: head is {head}, newest LogLine is seq 4" in cut.stdout
    assert "4 LogLines: 4 valid, 0 invalid" in cut.stdout and "Traceback" not in cut.stderr
    as_json = run_cli(str(tmp_path), "--json", home=tmp_path)  # VV_HOME itself works too
    assert as_json.returncode == 1
    (check,) = json.loads(as_json.stdout)["heads"]
    assert check["default"] and not check["valid"] and check["seq"] == 5
    assert check["reason"].startswith("chain cut off: head is seq 5")


def test_a_forged_head_file_is_refused(chain: Chain, tmp_path: Path) -> None:
    chain.paths[4].unlink()
    head_file = anchor(chain, tmp_path)
    doc = json.loads(head_file.read_text())
    head_file.write_text(
        json.dumps({**doc, "seq": 4, "hash": logline_hash(chain.loglines[3])})
    )  # hide the cut
    forged = run_cli(str(chain.storage), home=tmp_path)
    assert forged.returncode == 1
    assert (
        f"INVALID head {head_file}: head file refused: signature does not verify with key "
        f"{chain.signer.key_id}: the head was changed after signing"
    ) in forged.stdout
    stranger = KeyStore(tmp_path / "stranger")
    stranger.generate()
    elsewhere = tmp_path / "elsewhere.json"
    write_head(elsewhere, signed_head(chain.loglines[3], stranger.signer()))
    foreign = run_cli(str(chain.storage), "--head", str(elsewhere), home=tmp_path)
    assert foreign.returncode == 1 and "head file refused: unknown key id" in foreign.stdout
    assert "the head file beside the storage tree" not in foreign.stdout  # --head replaces the default


def test_an_auditor_given_head(chain: Chain, tmp_path: Path) -> None:
    exported = str(chain.export(tmp_path / "keys.json"))
    head = logline_hash(chain.loglines[-1])
    ok = run_cli(str(chain.storage), "--keys", exported, "--head", f"5:{head}", home=tmp_path / "auditor")
    assert ok.returncode == 0, ok.stdout
    assert f"VALID head --head: seq 5 (hash {head}) reached" in ok.stdout
    older = run_cli(
        str(chain.storage),
        "--keys",
        exported,
        "--head",
        f"edge-01:3:{logline_hash(chain.loglines[2])}",
        home=tmp_path,
    )
    assert older.returncode == 0  # a head from yesterday: the chain may have grown since
    wrong = run_cli(str(chain.storage), "--keys", exported, "--head", f"5:{'a' * 64}", home=tmp_path)
    assert wrong.returncode == 1
    assert f"the LogLine at seq 5 has hash {head}, not the head's {'a' * 64}" in wrong.stdout
    chain.paths[4].unlink()
    cut = run_cli(str(chain.storage), "--keys", exported, "--head", f"5:{head}", home=tmp_path)
    assert cut.returncode == 1 and f"chain cut off: head is seq 5 (hash {head}), newest LogLine is seq 4" in (
        cut.stdout
    )
    other = run_cli(str(chain.storage), "--keys", exported, "--head", f"edge-02:1:{head}", home=tmp_path)
    assert other.returncode == 1 and "no LogLine of edge-02 found" in other.stdout
    usage = run_cli(str(chain.storage), "--keys", exported, "--head", "5:nothex", home=tmp_path)
    assert usage.returncode == 2 and "no such head file, nor [DEVICE:]SEQ:HASH" in usage.stderr


def test_head_checks_in_verify_paths(chain: Chain, tmp_path: Path) -> None:
    hashes = [logline_hash(logline) for logline in chain.loglines]
    chain.paths[2].unlink()  # a gap at seq 3, which the head names
    report = verify_paths(
        [chain.storage], chain.keys, heads=[HeadCheck("h", ChainHead("edge-01", 3, hashes[2]))]
    )
    assert [check.reason for check in report.heads] == [f"no LogLine at the head's seq 3 (hash {hashes[2]})"]
    seen: list[dict[str, Any]] = []
    empty = tmp_path / "empty"
    empty.mkdir()
    verify_paths(
        [empty], chain.keys, heads=[HeadCheck("h", ChainHead(None, 1, hashes[0]))], on_invalid=seen.append
    )
    assert seen[0]["reasons"] == [f"chain cut off: head is seq 1 (hash {hashes[0]}), no LogLine found"]
    refused = HeadCheck("f", None, "head file refused: not JSON")
    report = verify_paths([chain.storage], chain.keys, heads=[refused])
    assert report.heads == [refused] and not report.valid
    assert "chain heads: 0 reached, 1 INVALID" in report.summary_line()


def test_without_a_head_the_output_says_a_cut_off_cannot_be_seen(chain: Chain, tmp_path: Path) -> None:
    result = run_cli(str(chain.storage), home=tmp_path)
    assert result.returncode == 0
    assert result.stdout.splitlines()[-2] == (
        "note: no chain head given or found: removed newest LogLines cannot be detected (--head)"
    )


def test_head_from_broker_checks_the_signed_head_in_the_retained_health(vv: VV) -> None:
    """The retained health is only a claim of whoever could publish it: its head's signature decides."""
    chain = Chain(vv.home, device=vv.settings.device).add(3)
    head = signed_head(chain.loglines[-1], chain.signer)
    topic = f"vv/{vv.settings.device}/health/sign"
    publisher = Publisher(vv.broker.port, *vv.admin())

    def retain_health(chain_head: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        health = {"node": "sign", "device": vv.settings.device, "status": "online", "time": head["time"]}
        payload = json.dumps({**health, "details": {"chain_head": chain_head}}).encode()
        publisher.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
        return vv.vv("verify", "--head-from-broker", str(chain.storage))

    try:
        genuine = retain_health(head)
        assert genuine.returncode == 0, genuine.stdout + genuine.stderr
        assert f"VALID head retained health {topic}: {vv.settings.device} seq 3" in genuine.stdout
        forged = retain_health({**head, "seq": 2})  # would hide seq 3
        assert forged.returncode == 1
        assert (
            f"INVALID head retained health {topic}: head refused: signature does not verify" in forged.stdout
        )
    finally:
        publisher.close()


def test_alert_raises_critical_for_a_chain_that_does_not_reach_its_head(vv: VV, probe: Probe) -> None:
    chain = Chain(vv.home, device=vv.settings.device).add(2)
    head_file = anchor(chain, vv.home)
    chain.paths[1].unlink()
    result = vv.vv("verify", "--alert", str(vv.home / "storage"))
    assert result.returncode == 1 and "chain cut off" in result.stdout
    alert = probe.wait_event("alert.critical")[0]["data"]
    assert alert["title"] == "Chain head not reached" and alert["context"]["path"] == str(head_file)
    assert alert["message_details"].startswith(f"{head_file}: chain cut off: head is seq 2")
