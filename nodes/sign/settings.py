"""The sign node's `[sign]` settings (also read by `vv keys` and `vv export`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bus.config import section


@section("sign")
@dataclass(frozen=True)
class SignSettings:
    alg: Literal["ed25519", "hmac-sha256"] = "ed25519"
    key_id: str = ""
    failpoint: Literal["", "after-write"] = ""  # testing only: exit right after writing a LogLine
