"""Every schema is valid draft 2020-12 and accepts its valid fixtures and refuses its invalid ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from bus import schemas
from bus.resources import data_dir

FIXTURES = data_dir("schemas") / "fixtures"
CASES = sorted(FIXTURES.glob("*/*.json"))


def test_every_schema_is_valid_and_has_fixtures() -> None:
    names = schemas.known_schemas()
    assert {
        "envelope",
        "health",
        "alert",
        "video.new",
        "scan.done",
        "summary.done",
        "logline.signed",
        "video.quarantined",
    } <= set(names)
    for name in names:
        schema = schemas.load_schema(name)
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == f"urn:vv-edge:schema:{name}:1"
        assert list((FIXTURES / name).glob("valid-*.json")), f"{name} has no valid fixture"
        assert list((FIXTURES / name).glob("invalid-*.json")), f"{name} has no invalid fixture"


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture(path: Path) -> None:
    document = json.loads(path.read_text())
    if path.stem.startswith("valid"):
        schemas.validate(path.parent.name, document)
    else:
        with pytest.raises(schemas.SchemaError) as caught:
            schemas.validate(path.parent.name, document)
        assert path.parent.name in str(caught.value)


def test_error_names_the_failing_field() -> None:
    doc = json.loads((FIXTURES / "video.new" / "valid-1.json").read_text())
    doc["video"]["bytes"] = "many"
    with pytest.raises(schemas.SchemaError, match="video/bytes"):
        schemas.validate("video.new", doc)


def test_event_families_share_schemas() -> None:
    assert schemas.schema_name_for("alert.critical") == "alert"
    assert schemas.schema_name_for("cmd.ingest.pause") == "cmd"
    assert schemas.schema_name_for("scan.done") == "scan.done"
