"""`vv_toml`: a mapping of VV settings as the TOML file `VV_CONFIG` names.

A filter rather than a template so vv_edge and vv_central share it: tables, nested tables, strings
(JSON escapes are valid TOML basic-string escapes), booleans, numbers and lists of those.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"vv_toml: {where} is {value}: settings take finite numbers")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item, f"{where}[]") for item in value) + "]"
    raise ValueError(f"vv_toml: {where} is a {type(value).__name__}: use strings, numbers, booleans or lists")


def _key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _table(name: str, doc: Mapping[str, Any], lines: list[str]) -> None:
    scalars = {k: v for k, v in doc.items() if not isinstance(v, Mapping)}
    if name and scalars:
        lines += ["", f"[{name}]"]
    lines += [
        f"{_key(key)} = {_value(value, f'{name}.{key}' if name else key)}" for key, value in scalars.items()
    ]
    for key, value in doc.items():
        if isinstance(value, Mapping):
            _table(f"{name}.{_key(key)}" if name else _key(key), value, lines)


def vv_toml(doc: Mapping[str, Any]) -> str:
    """The settings as TOML text: top-level keys first, then one [table] per section."""
    lines: list[str] = []
    _table("", doc, lines)
    return "\n".join(lines).lstrip("\n") + "\n"


class FilterModule:
    """Ansible's entry point for filter plugins."""

    def filters(self) -> dict[str, Any]:
        return {"vv_toml": vv_toml}
