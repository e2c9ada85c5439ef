"""The AsyncAPI 3 document: generated from schemas/ and the topic table, checked in, never drifting
from the schemas, and valid for the official AsyncAPI CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import asyncapi

DOC = REPO / "docs" / "asyncapi.yaml"


def test_the_checked_in_document_matches_the_schemas() -> None:
    assert DOC.read_text() == asyncapi.render(), (
        "docs/asyncapi.yaml differs from what schemas/ and the topic table make: run `make asyncapi`"
    )


def test_every_schema_is_in_the_document_or_an_artifact() -> None:
    assert asyncapi.unclassified() == []
    doc = yaml.safe_load(DOC.read_text())
    ids = {s.get("x-schema-id") for s in doc["components"]["schemas"].values()}
    for channel in asyncapi.CHANNELS:
        assert f"urn:vv-edge:schema:{channel.schema}:1" in ids
    refs = [m["payload"] for m in doc["components"]["messages"].values()]
    assert len(refs) == len(asyncapi.CHANNELS)


def test_a_schema_change_is_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    original = asyncapi.load_schema("alert")
    changed = {**original, "properties": {**original["properties"], "new_field": {"type": "string"}}}
    monkeypatch.setattr(
        asyncapi, "load_schema", lambda name: changed if name == "alert" else original_load(name)
    )
    assert asyncapi.render() != DOC.read_text()


original_load = asyncapi.load_schema


@pytest.mark.slow
def test_the_official_cli_validates_it() -> None:
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("npx is not installed (Node.js): the AsyncAPI CLI cannot run here")
    try:
        result = subprocess.run(
            [npx, "--yes", "@asyncapi/cli", "validate", str(DOC)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("npx did not finish in 10 minutes (no network to the npm registry?)")
    output = result.stdout + result.stderr
    if result.returncode != 0 and any(
        sign in output for sign in ("ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNREFUSED", "network", "E404")
    ):
        pytest.skip(f"the AsyncAPI CLI could not be fetched: {output.strip().splitlines()[-1]}")
    assert result.returncode == 0, output
    assert "is valid" in output, output
