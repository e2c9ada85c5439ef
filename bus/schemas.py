"""JSON Schema validation of events, health and artifacts, with validators compiled once."""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from bus.resources import data_dir

SCHEMA_PREFIX = "urn:vv-edge:schema:"


class SchemaError(ValueError):
    """A document does not match its schema; the message says where and why."""


def schema_name_for(event_type: str) -> str:
    """Alerts and commands share one data schema per family; pipeline events have their own."""
    family = event_type.split(".", 1)[0]
    return family if family in ("alert", "cmd") else event_type


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    path = data_dir("schemas") / f"{name}.schema.json"
    try:
        schema: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise SchemaError(f"no schema named {name!r}") from None
    return schema


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_id(name: str) -> str:
    return str(load_schema(name)["$id"])


def validate(name: str, document: Any) -> None:
    """Raise SchemaError naming the failing path unless `document` matches schema `name`."""
    validator = _validator(name)
    if validator.is_valid(document):  # fast path: no error objects built for valid documents
        return
    error = best_match(validator.iter_errors(document))
    where = "/".join(str(part) for part in error.absolute_path) or "(root)"
    raise SchemaError(f"{name}: {where}: {error.message}")


def known_schemas() -> list[str]:
    return sorted(p.name.removesuffix(".schema.json") for p in data_dir("schemas").glob("*.schema.json"))
