"""The alerter's `[alerter]` settings: channels, grouping, repeats, the on-disk queue."""

from __future__ import annotations

from dataclasses import dataclass

from bus.config import section


@section("alerter")
@dataclass(frozen=True)
class AlerterSettings:
    channels: str = ""  # a JSON list of channel tables, or the path of a .toml/.json file of them
    window_s: float = 300.0  # repeats closer than this fold into one episode (counted, not re-sent)
    group_wait_s: float = 30.0  # a new group waits this long to collect a burst before its first notification
    group_interval_s: float = 300.0  # then at most one notification per group this often
    repeat_interval_s: float = 4 * 3600.0  # a still-firing alert is notified again after this long
    expire_s: float = 7 * 86400.0  # an unresolved alert not seen for this long is forgotten
    inhibit_offline: bool = True  # mute a node's own alerts while its health says offline
    queue_max: int = 10_000  # notifications kept on disk per channel while it is down
    max_alerts: int = 10_000  # alerts tracked at once; beyond it the least recently seen are forgotten
    retry_min_s: float = 1.0
    retry_max_s: float = 300.0
    send_timeout_s: float = 30.0
