"""Inputs from outside the bus: config files, settings, CLI paths and names.

Each bad input gets one line naming it (control characters escaped), exit 2 for a usage or
configuration error, no traceback, and nothing on disk touched.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FIXTURES_DIR, REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from test_forged_events import listing

from bus.config import ConfigError, load_settings
from bus.envelope import Event
from bus.inputs import shown
from bus.logs import ConsoleFormatter, JsonFormatter
from nodes.alerter.channels import load_channels
from nodes.cli import main
from nodes.journal.fold import VideoState, format_table, format_video
from nodes.ops.tail import format_line

CONTROL = "a\x1b[2Jb\n"  # clears a terminal, then splits the line: must never reach stderr raw


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment whose VV_HOME (`place/home`) does not exist yet: a refusal must not create it."""
    for var in [v for v in os.environ if v.startswith("VV_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("VV_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VV_DEVICE", "edge1")
    monkeypatch.setenv("VV_MQTT_PORT", "1")  # nothing listens: a verb that got as far as the broker fails
    (tmp_path / "decoy.txt").write_text("keep me")
    return tmp_path


def vv(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `vv ARGS` in this process; (exit code, stderr). argparse exits through SystemExit."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def assert_one_clean_line(stderr: str, *expected: str) -> None:
    """The message is the last line (argparse prints its usage first), holds `expected`, nothing raw."""
    assert "Traceback" not in stderr
    assert stderr.replace("\n", "").isprintable(), repr(stderr)
    line = stderr.strip().splitlines()[-1]
    for part in expected:
        assert part in line, (part, line)


# ----------------------------------------------------------------- settings
def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


CONFIG_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "directory": (lambda p: (p.mkdir(), p)[1], "is a directory, not a regular file"),
    "fifo": (fifo, "is a FIFO, not a regular file"),  # before: read_text blocked forever
    "binary": (lambda p: (p.write_bytes(b"\xff\xfe\x00"), p)[1], "is not UTF-8 text"),
    "missing, control characters": (lambda p: p.with_name(CONTROL), "does not exist"),
    "under a file": (lambda p: (p.write_text(""), p / "vv.toml")[1], "Not a directory"),  # an OSError
}


@pytest.mark.parametrize("case", CONFIG_FILES)
def test_a_config_file_that_cannot_be_read_is_one_line(tmp_path: Path, case: str) -> None:
    make, message = CONFIG_FILES[case]
    path = make(tmp_path / "vv.toml")
    with pytest.raises(ConfigError) as caught:
        load_settings({"VV_CONFIG": str(path)})
    assert message in str(caught.value) and str(caught.value).startswith("VV_CONFIG: ")
    assert str(caught.value).isprintable()


@pytest.mark.parametrize(
    ("environ", "toml", "message"),
    [
        ({"VV_SCAN_DETECT_FPS": "nan"}, "", "scan.detect_fps: 'nan' is not a finite number"),
        ({"VV_SCAN_CONFIDENCE": "1e999"}, "", "scan.confidence: '1e999' is not a finite number"),
        ({}, "[scan]\ndetect_fps = inf\n", "scan.detect_fps: inf is not a finite number"),
        ({}, "[mqtt]\nport = nan\n", "mqtt.port: nan is not an integer"),
        ({"VV_MQTT_PORT": "65536"}, "", "mqtt.port: '65536' is above 65535"),
        ({"VV_MQTT_PORT": "0"}, "", "mqtt.port: '0' is below 1"),
        ({"VV_MQTT_PORT": "9" * 5000}, "", "is not an integer"),
        ({}, "[mqtt]\nport = [1]\n", "mqtt.port: [1] is not an integer"),
        ({"VV_DEVICE": CONTROL}, "", r"device: 'a\x1b[2Jb\n' must be non-empty, printable"),
        ({"VV_DEVICE": "cam 1"}, "", "free of spaces"),
        ({"VV_MQTT_\x1b[2J": "1"}, "", r"mqtt.\x1b[2j: unknown setting"),
        ({}, '"\\u001b[2J" = 1\n', r"\x1b[2J: unknown setting"),
        ({}, '[bus]\ncodec = "\\u001b[2J"\n', r"bus.codec: '\x1b[2J' is not one of msgpack, json"),
    ],
)
def test_bad_values_are_refused_naming_the_key_escaped(
    tmp_path: Path, environ: dict[str, str], toml: str, message: str
) -> None:
    config = tmp_path / "vv.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings({"VV_CONFIG": str(config), **environ})
    text = str(caught.value)
    assert message in text and text.isprintable() and len(text) < 200


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{dir}/channels.toml", "is a FIFO, not a regular file"),
        ("{dir}/binary.json", "is not UTF-8 text"),
        ("{dir}", "is a directory, not a regular file"),
    ],
)
def test_alerter_channel_files_are_checked_before_reading(tmp_path: Path, value: str, message: str) -> None:
    fifo(tmp_path / "channels.toml")
    (tmp_path / "binary.json").write_bytes(b"\xff[]")
    with pytest.raises(ConfigError, match=message):
        load_channels(value.format(dir=tmp_path))


@pytest.mark.parametrize(
    ("kind", "url", "message"),
    [
        ("alertmanager", "http://", "'http://' is not an http(s) URL with a host"),
        ("alertmanager", "http://am b:9093", "is not an http(s) URL with a host"),
        ("alertmanager", "http://[::1", "url: not a valid URL (Invalid IPv6 URL)"),  # before: ValueError
        ("alertmanager", "http://am:99999", "url: not a valid URL (Port out of range"),
        ("pagerduty", "https://events.example/\x1b[2J", "is not an http(s) URL with a host"),
        ("apprise", "ntfy://ntfy.sh/topic\nx", "urls[0]: holds spaces or control characters"),
    ],
)
def test_channel_urls_are_checked_at_start(kind: str, url: str, message: str) -> None:
    table = {"kind": kind, "url": url, **({"routing_key": "k"} if kind == "pagerduty" else {})}
    with pytest.raises(ConfigError) as caught:
        load_channels(json.dumps([table]))
    assert message in str(caught.value) and str(caught.value).startswith("alerter.channels[0]")


def test_a_config_error_reaches_the_terminal_as_one_escaped_line(
    place: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"VV_SCAN_{CONTROL}", "1")
    code, stderr = vv(capsys, "status")
    assert code == 2
    assert stderr.splitlines() == [r"vv: configuration error: scan.a\x1b[2jb\n: unknown setting"]
    assert not (place / "home").exists()


# ----------------------------------------------------------------- vv ingest
def _symlink(place: Path) -> Path:
    (place / "clip.mp4").symlink_to(place / "decoy.txt")
    return place / "clip.mp4"


def _directory(place: Path) -> Path:
    (place / "dir.mp4").mkdir()
    return place / "dir.mp4"


def _control_name(place: Path) -> Path:
    (place / f"{CONTROL}.mp4").write_bytes(b"not a video")
    return place / f"{CONTROL}.mp4"


INGEST: dict[str, tuple[Callable[[Path], Path], str]] = {
    "symlink": (_symlink, "is a symbolic link, not a regular file"),
    "fifo": (lambda place: fifo(place / "pipe.mp4"), "is a FIFO, not a regular file"),
    "device": (lambda place: Path("/dev/zero"), "/dev/zero is a character device, not a regular file"),
    "directory": (_directory, "is a directory, not a regular file"),
    "missing": (lambda place: place / "gone.mp4", "gone.mp4 does not exist"),
    "control characters": (_control_name, r"a\x1b[2Jb\n.mp4: the name holds control characters"),
}


@pytest.mark.parametrize("case", INGEST)
def test_ingest_refuses_what_is_not_a_plain_file_and_touches_nothing(
    place: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    make, message = INGEST[case]
    path = make(place)
    before = listing(place)
    code, stderr = vv(capsys, "ingest", str(path))
    assert code == 2
    assert_one_clean_line(stderr, "vv ingest: ", message, "nothing was ingested")
    assert len(stderr.strip().splitlines()) == 1
    assert listing(place) == before  # not moved, not read, VV_HOME not even created


def test_ingest_refuses_every_bad_file_before_touching_a_good_one(
    place: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (place / "good.mp4").write_bytes(b"video bytes")
    before = listing(place)
    code, stderr = vv(capsys, "ingest", str(place / "good.mp4"), str(_symlink(place)), "/dev/zero")
    assert code == 2 and len(stderr.strip().splitlines()) == 2
    assert listing(place) == {**before, "clip.mp4": f"-> {place / 'decoy.txt'}"}  # only the link made here


# ----------------------------------------------------------------- other verbs
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "--timeout", "nan", "x.mp4"], "argument --timeout: 'nan' is not a finite number"),
        (["ingest", "--timeout", "-1", "x.mp4"], "argument --timeout: '-1' must be positive"),
        (["cleanup", "--days", "nan", "--dirs", "{place}"], "argument --days: 'nan' is not a finite number"),
        (["cleanup", "--days", "inf", "--dirs", "{place}"], "argument --days: 'inf' is not a finite number"),
        (["cleanup", "--days", "1", "--dirs", "{place}", "--log-file", "{place}/pipe"], "is a FIFO"),
        (
            ["cleanup", "--days", "1", "--dirs", "{place}", "--job-period", "nan"],
            "--job-period: 'nan' is not a",
        ),
        (["export", "--retention-days", "-5"], "argument --retention-days: '-5' must not be negative"),
        (["export", "--out", "{place}/decoy.txt"], "decoy.txt exists and is not a directory"),
        (["export", "--verify", "{place}/x.manifest.json"], "x.manifest.json is a FIFO, not a regular file"),
        (["export", "--verify", "{place}/y.tar.gz"], "y.manifest.json is a FIFO, not a regular file"),
        (["status", "--since", CONTROL], r"argument --since: 'a\x1b[2Jb\n' is not an RFC 3339 time"),
        (["replay", "--since", "yesterday"], "argument --since: 'yesterday' is not an RFC 3339 time"),
        (["tail", "--count", "-1"], "argument --count: '-1' must not be negative"),
        (["tail", "vv/#/x"], "argument filter: 'vv/#/x' is not a topic filter"),
        (["tail", "alert.warn+"], "argument filter: 'alert.warn+' is not a topic filter"),
        (["tail", CONTROL], r"argument filter: 'a\x1b[2Jb\n' is not a topic filter"),
        (["run", "journal", "--instance", "../../../x"], "argument --instance: '../../../x' must be"),
        (["run", "journal", "--instance", "a/b"], "argument --instance: 'a/b' must be"),
        (["ingest", f"--{CONTROL}", "x"], r"unrecognized arguments: --a\x1b[2Jb\n"),
        ([CONTROL], r"invalid choice: 'a\x1b[2Jb\n'"),
    ],
)
def test_bad_arguments_are_usage_errors_that_touch_nothing(
    place: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    fifo(place / "pipe")
    fifo(place / "x.manifest.json")
    (place / "y.tar.gz").write_bytes(b"")
    fifo(place / "y.manifest.json")
    before = listing(place)
    code, stderr = vv(capsys, *[a.format(place=place) for a in args])
    assert code == 2
    assert_one_clean_line(stderr, message)
    assert listing(place) == before


def test_a_verb_names_what_it_printed_escaped(place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stderr = vv(capsys, "export", "--verify", str(place / f"{CONTROL}.tar.gz"))
    assert code == 2
    assert stderr.splitlines() == [rf"vv export: {place}/a\x1b[2Jb\n.tar.gz does not exist"]


def test_an_unusable_vv_home_is_one_line_not_a_traceback(
    place: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VV_HOME", str(place / "decoy.txt"))  # a file where a directory should be
    code, stderr = vv(capsys, "broker", "--print-config")
    assert code == 1
    assert_one_clean_line(stderr, "vv broker: ", "Not a directory", "decoy.txt")
    assert (place / "decoy.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        (["ingest", "{place}/pipe.mp4"], {}, "pipe.mp4 is a FIFO, not a regular file"),
        (["status"], {"VV_CONFIG": "{place}/pipe.mp4"}, "VV_CONFIG: {place}/pipe.mp4 is a FIFO"),
        (["status"], {"VV_CONFIG": "{place}"}, "VV_CONFIG: {place} is a directory"),
    ],
)
def test_a_real_vv_process_prints_one_line_and_exits_2(
    place: Path, args: list[str], environ: dict[str, str], message: str
) -> None:
    """End to end, as an operator sees it: no traceback, no hang on a FIFO, one line on stderr."""
    fifo(place / "pipe.mp4")
    env = {**os.environ, **{k: v.format(place=place) for k, v in environ.items()}}
    result = subprocess.run(
        [sys.executable, "-m", "nodes.cli", *[a.format(place=place) for a in args]],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert_one_clean_line(result.stderr, message.format(place=place))
    assert not (place / "home").exists()


# ----------------------------------------------------------------- escaping
@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_shown_is_one_printable_line_and_leaves_printable_text_alone(text: str) -> None:
    result = shown(text)
    assert result.isprintable()
    if text.isprintable():
        assert result == text


def test_tail_shows_what_anyone_published_escaped() -> None:
    data = json.loads((FIXTURES_DIR / "video.new" / "valid-1.json").read_text())
    data["original_name"] = CONTROL
    envelope = Event(type="video.new", source="vv://edge1/x", device="edge1", epoch=1, seq=1, data=data)
    line = format_line("vv/edge1/video/new", envelope.to_dict())
    assert line.isprintable() and r"a\x1b[2Jb\n: " in line  # the gist names the file


def test_status_shows_journal_text_escaped() -> None:
    state = VideoState(
        "0" * 32, stage="quarantined", quarantine_reason=CONTROL, summary_text=f"{CONTROL}\x9b"
    )
    assert all(line.isprintable() for line in format_video(state).splitlines())
    assert r"quarantine a\x1b[2Jb\n" in format_video(state) and r"\x1b[2J" in format_table([state])


def test_logs_escape_control_characters_for_terminals_and_files() -> None:
    name = f"{CONTROL}\x9b\u2028\udcff.mp4"  # C1 CSI, a line separator, an undecodable byte
    record = logging.LogRecord("vv", logging.ERROR, __file__, 1, "refused %s", (name,), None)
    line = JsonFormatter("ingest", "edge1").format(record)
    assert line.isprintable() and line.encode("utf-8")
    assert json.loads(line)["message"] == f"refused {name}"
    console = ConsoleFormatter("%(message)s").format(record)
    assert console == r"refused a\x1b[2Jb\n\x9b\u2028\udcff.mp4"
