"""Settings: TOML plus VV_* overrides, and one clear line naming any bad key or value."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from bus.config import ConfigError, Settings, load_settings, section, section_name
from nodes.scan.settings import ScanSettings


def test_defaults_toml_and_env_overrides(tmp_path: Path) -> None:
    config = tmp_path / "vv.toml"
    config.write_text(
        'device = "cam-01"\nhome = "/srv/vv"\n[mqtt]\nport = 1884\n[scan]\ndetect_fps = 2.5\nmotion_gating = false\n'
    )
    settings = load_settings({"VV_CONFIG": str(config), "VV_MQTT_PORT": "1999", "VV_BUS_CODEC": "json"})
    assert settings.device == "cam-01" and settings.home == Path("/srv/vv")
    assert settings.mqtt.port == 1999  # the environment wins over the file
    assert (
        settings.section(ScanSettings).detect_fps == 2.5
        and settings.section(ScanSettings).motion_gating is False
    )
    assert settings.bus.codec == "json"
    assert load_settings({}).mqtt.port == 1883


@pytest.mark.parametrize(
    ("environ", "toml", "message"),
    [
        ({"VV_MQTT_PORT": "eighty"}, "", "mqtt.port: 'eighty' is not an integer"),
        ({"VV_BUS_CODEC": "xml"}, "", "bus.codec: 'xml' is not one of msgpack, json"),
        ({"VV_SCAN_MOTION_GATING": "maybe"}, "", "scan.motion_gating: 'maybe' is not a boolean"),
        ({"VV_MQTT_HOSTNAME": "x"}, "", "mqtt.hostname: unknown setting"),
        ({}, "[mqtt]\nprt = 1\n", "mqtt.prt: unknown setting"),
        ({}, "colour = 'blue'\n", "colour: unknown setting"),
        ({}, "mqtt = 5\n", "mqtt: expected a [mqtt] table"),
        ({}, "[scan]\nimgsz = -320\n", "scan.imgsz: -320 must not be negative"),
        ({"VV_DEVICE": "a/b"}, "", "device: 'a/b' must be non-empty"),
        ({}, "[broken\n", "is not valid TOML"),
        ({}, "scan = 5\n", "scan: expected a [scan] table"),
        ({}, "[sections]\nscan = 1\n", "sections: unknown setting"),
        ({"VV_DISK_WARN_PERCENT": "-1"}, "", "disk.warn_percent: '-1' must not be negative"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, environ: dict[str, str], toml: str, message: str) -> None:
    config = tmp_path / "vv.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings({"VV_CONFIG": str(config), **environ})
    assert message in str(caught.value)


def test_a_node_with_a_bad_setting_stops_at_start_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nodes.cli", "run", "journal"],
        env={"PATH": "/usr/bin:/bin", "VV_JOURNAL_FSYNC": "sometimes"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vv: configuration error: journal.fsync: 'sometimes' is not one of always, interval, never"
    ]


def test_every_verb_has_help() -> None:
    from nodes.cli import COMMANDS

    for verb in ["--help", *COMMANDS]:
        args = [verb] if verb == "--help" else [verb, "--help"]
        result = subprocess.run(
            [sys.executable, "-m", "nodes.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, (verb, result.stderr)
        assert "usage: vv" in result.stdout


def test_node_sections_are_registered_once_and_read_typed() -> None:
    """Each node declares its section beside its code; bus reads it by class, never by import."""
    assert Settings().section(ScanSettings) == ScanSettings()  # not loaded: the defaults
    assert section_name(ScanSettings) == "scan"

    @dataclasses.dataclass(frozen=True)
    class Other:
        x: int = 1

    for taken in ("scan", "mqtt", "my_node"):
        with pytest.raises(ValueError, match=f"settings section '{taken}' is taken"):
            section(taken)(Other)
    with pytest.raises(LookupError, match="Other is not a registered settings section"):
        Settings().section(Other)
