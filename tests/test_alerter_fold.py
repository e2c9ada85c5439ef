"""The alerter's fold with an injected clock: folding, grouping, repeats, resolves, silences, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bus.alerts import Severity, build_alert
from nodes.alerter.fold import Delivery, Fold, FoldSettings, Route, SilenceError

SETTINGS = FoldSettings(
    window_s=60, group_wait_s=10, group_interval_s=30, repeat_interval_s=600, expire_s=3600
)
ROUTES = [Route("all", "INFO"), Route("crit", "CRITICAL")]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def alert(
    title: str = "Disk space low",
    severity: Severity = "WARNING",
    source: str = "disk",
    resolved: bool = False,
    **context: Any,
) -> dict[str, Any]:
    return build_alert(
        severity=severity,
        title=title,
        details=f"{title}: details that change every time {context}",
        source=source,
        device="edge1",
        context=context,
        actions=["look at it"],
        status="resolved" if resolved else "firing",
    )


def sent(deliveries: list[Delivery], channel: str) -> list[tuple[str, str, int]]:
    """(title, status, count) of every alert delivered to `channel`."""
    return [
        (a["title"], a["status"], a["count"]) for d in deliveries if d.channel == channel for a in d.alerts
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fold(clock: Clock) -> Fold:
    return Fold(SETTINGS, ROUTES, clock=clock)


def test_burst_is_one_notification_with_the_count_after_group_wait(fold: Fold, clock: Clock) -> None:
    outcomes = []
    for _ in range(100):
        outcomes.append(fold.observe(alert()))
        clock.advance(0.05)
    assert outcomes[0] == "new" and set(outcomes[1:]) == {"folded"}
    assert fold.due() == []  # 5 s into a 10 s group wait
    next_due = fold.next_due()
    assert next_due == pytest.approx(clock.now + 5)
    clock.now = next_due
    deliveries = fold.due()
    assert sent(deliveries, "all") == [("Disk space low", "firing", 100)]
    assert sent(deliveries, "crit") == []  # a WARNING is below that channel's minimum
    assert fold.due() == []


def test_repeats_fold_until_the_repeat_interval(fold: Fold, clock: Clock) -> None:
    fold.observe(alert())
    clock.advance(10)
    assert sent(fold.due(), "all") == [("Disk space low", "firing", 1)]
    for _ in range(19):  # every 30 s: within the window, so one episode
        clock.advance(30)
        assert fold.observe(alert()) == "folded"
        assert fold.due() == []
    clock.advance(30)  # 600 s after the notification
    assert sent(fold.due(), "all") == [("Disk space low", "firing", 20)]


def test_group_interval_spaces_updates_of_a_group(fold: Fold, clock: Clock) -> None:
    fold.observe(alert(mount="/"))
    clock.advance(10)
    assert len(fold.due()) == 1
    clock.advance(1)
    fold.observe(alert(mount="/srv"))  # same group (edge1/disk), different alert
    fold.observe(alert(title="Other", source="dvr"))  # another group: its own group wait
    clock.advance(10)
    assert sent(fold.due(), "all") == [("Other", "firing", 1)]
    clock.advance(18.9)
    assert fold.due() == []
    clock.advance(0.1)  # 30 s after the group's last flush; only what changed is sent
    [delivery] = fold.due()
    assert delivery.group == "edge1/disk"
    assert [a["context"] for a in delivery.alerts] == [{"mount": "/srv"}]


def test_resolve_goes_once_to_the_channels_that_got_the_firing_alert(fold: Fold, clock: Clock) -> None:
    fold.observe(alert())
    fold.observe(alert(title="Disk full", severity="CRITICAL"))
    clock.advance(10)
    first = fold.due()
    assert sorted(sent(first, "all")) == [("Disk full", "firing", 1), ("Disk space low", "firing", 1)]
    assert sent(first, "crit") == [("Disk full", "firing", 1)]
    assert fold.observe(alert(resolved=True)) == "resolved"
    assert fold.observe(alert(resolved=True)) == "ignored"
    clock.advance(30)
    resolved = fold.due()
    assert sent(resolved, "all") == [("Disk space low", "resolved", 1)]
    assert sent(resolved, "crit") == []
    assert resolved[0].alerts[0]["ends_at"] is not None
    fold.observe(alert(title="Disk full", severity="CRITICAL", resolved=True))
    clock.advance(30)
    assert sent(fold.due(), "crit") == [("Disk full", "resolved", 1)]
    assert fold.alerts == {} and fold.groups == {}


def test_resolved_before_anyone_was_told_is_dropped_quietly(fold: Fold, clock: Clock) -> None:
    fold.observe(alert())
    clock.advance(2)
    fold.observe(alert(resolved=True))
    clock.advance(10)
    assert fold.due() == []
    assert fold.alerts == {} and fold.groups == {}


def test_a_flap_before_the_resolve_went_out_is_one_episode(fold: Fold, clock: Clock) -> None:
    fold.observe(alert())
    clock.advance(10)
    fold.due()
    fold.observe(alert(resolved=True))
    assert fold.observe(alert()) == "reopened"
    clock.advance(30)
    assert fold.due() == []
    assert fold.alerts[alert()["dedup_key"]].count == 2


def test_a_repeat_after_a_quiet_window_is_a_new_episode(fold: Fold, clock: Clock) -> None:
    fold.observe(alert())
    fold.observe(alert())
    clock.advance(10)
    assert sent(fold.due(), "all") == [("Disk space low", "firing", 2)]
    clock.advance(61)
    assert fold.observe(alert()) == "new"
    assert sent(fold.due(), "all") == [("Disk space low", "firing", 1)]  # group interval already passed


def test_escalation_of_the_same_alert_is_notified(fold: Fold, clock: Clock) -> None:
    fold.observe(alert(title="Stream down"))
    clock.advance(10)
    assert sent(fold.due(), "crit") == []
    assert fold.observe(alert(title="Stream down", severity="CRITICAL")) == "escalated"
    clock.advance(30)
    deliveries = fold.due()
    assert sent(deliveries, "crit") == [("Stream down", "firing", 2)]
    assert deliveries[0].alerts[0]["severity"] == "CRITICAL"


def test_silence_mutes_until_it_ends_and_resolve_still_reaches_those_told(fold: Fold, clock: Clock) -> None:
    fold.observe(alert(title="Noisy"))
    clock.advance(10)
    fold.due()
    silence = fold.silence({"title": "Noisy"}, clock.now + 100, "maintenance")
    extended = fold.silence({"title": "Noisy"}, clock.now + 1000)
    assert extended.id == silence.id and list(fold.silences) == [silence.id]  # same matcher: extended
    fold.observe(alert(title="New one"))
    clock.advance(700)  # the repeat of "Noisy" falls inside the silence
    assert fold.observe(alert(title="Noisy")) == "new"  # after the window: new episode, but silenced
    fold.observe(alert(title="Quiet", severity="CRITICAL"))
    clock.advance(30)
    assert [s for s in sent(fold.due(), "all") if s[0] == "Noisy"] == []
    assert fold.summary()["muted"] == 1
    clock.now = extended.until  # the silence ends: the open episode is notified
    assert sent(fold.due(), "all") == [("Noisy", "firing", 1)]
    fold.silence({"dedup_key": alert(title="Noisy")["dedup_key"]}, clock.now + 1000)
    fold.observe(alert(title="Noisy", resolved=True))
    clock.advance(30)
    assert sent(fold.due(), "all") == [("Noisy", "resolved", 1)]


def test_unsilence_and_bad_silences(fold: Fold, clock: Clock) -> None:
    silence = fold.silence({"source_component": "disk"}, clock.now + 100)
    fold.observe(alert())
    clock.advance(10)
    assert fold.due() == []
    assert fold.unsilence(silence_id=silence.id) == 1
    assert sent(fold.due(), "all") == [("Disk space low", "firing", 1)]
    assert fold.unsilence(matcher={"title": "nothing"}) == 0
    with pytest.raises(SilenceError, match="needs a matcher"):
        fold.silence({}, clock.now + 10)
    with pytest.raises(SilenceError, match="unknown matcher field"):
        fold.silence({"severity": "INFO"}, clock.now + 10)
    with pytest.raises(SilenceError, match="in the past"):
        fold.silence({"title": "x"}, clock.now - 1)


def test_ack_mutes_until_resolved_and_a_new_episode_notifies_again(tmp_path: Path, clock: Clock) -> None:
    fold = Fold(SETTINGS, ROUTES, tmp_path / "fold.json", clock)
    fold.observe(alert(severity="CRITICAL"))
    clock.advance(10)
    assert sent(fold.due(), "all") == [("Disk space low", "firing", 1)]
    key = alert()["dedup_key"]
    assert fold.ack("0" * 64, "alice") is None  # nothing firing under that key
    assert fold.ack(key, "alice", "on it") is not None
    fold.save()
    fold = Fold(SETTINGS, ROUTES, tmp_path / "fold.json", clock)  # the ack outlives a restart
    [acked] = fold.summary()["acked"]
    assert (acked["dedup_key"], acked["by"], acked["comment"]) == (key, "alice", "on it")
    clock.advance(SETTINGS.repeat_interval_s * 3)  # no repeat while acked, though it keeps firing
    assert fold.observe(alert(severity="CRITICAL")) == "new"  # after the window: a new episode...
    fold.ack(key, "alice")
    clock.advance(SETTINGS.repeat_interval_s * 3)
    assert fold.due() == [] and fold.summary()["muted"] == 1
    fold.observe(alert(resolved=True))
    clock.advance(30)
    assert sent(fold.due(), "crit") == [("Disk space low", "resolved", 1)]  # those told hear it
    assert fold.summary()["acked"] == []
    fold.observe(alert(severity="CRITICAL"))  # firing again after the resolve: notified again
    clock.advance(10)
    assert sent(fold.due(), "crit") == [("Disk space low", "firing", 1)]


def test_a_new_episode_clears_the_ack(fold: Fold, clock: Clock) -> None:
    fold.observe(alert())
    clock.advance(10)
    fold.due()
    fold.ack(alert()["dedup_key"], "bob")
    clock.advance(SETTINGS.window_s + 1)
    assert fold.observe(alert()) == "new"  # the quiet gap ended the acked episode
    clock.advance(SETTINGS.group_interval_s)
    assert sent(fold.due(), "all") == [("Disk space low", "firing", 1)]


def test_firing_events_are_the_original_envelopes(fold: Fold) -> None:
    first = {"id": "e1", "type": "alert.warning", "seq": 1, "data": {"ignored": True}}
    fold.observe(alert(title="A"), first)
    fold.observe(alert(title="A"), {**first, "id": "e2", "seq": 2})  # the latest document's event
    fold.observe(alert(title="B"), {**first, "id": "e3", "seq": 3})
    fold.observe(alert(title="B", resolved=True), {**first, "id": "e4", "seq": 4})
    fold.observe(alert(title="C"))  # folded without its envelope (a state from before)
    events, unknown = fold.firing_events()
    assert [(e["id"], e["seq"], e["data"]["title"]) for e in events] == [("e2", 2, "A")]
    assert unknown == 1


def test_offline_node_alerts_are_inhibited_until_it_returns(fold: Fold, clock: Clock) -> None:
    assert fold.set_node_status("dvr", "offline")
    fold.observe(alert(title="Stream down", source="dvr"))
    fold.observe(alert(title="Offline dvr", source="monitor", node="dvr"))
    clock.advance(10)
    assert sent(fold.due(), "all") == [("Offline dvr", "firing", 1)]
    assert fold.set_node_status("dvr", "online")
    clock.advance(30)
    assert sent(fold.due(), "all") == [("Stream down", "firing", 1)]


def test_state_survives_a_restart_without_paging_again(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "fold.json"
    fold = Fold(SETTINGS, ROUTES, path, clock)
    fold.observe(alert())
    clock.advance(10)
    assert len(fold.due()) == 1
    fold.silence({"title": "Other"}, clock.now + 100, "planned work", "carol")
    fold.save()
    assert not fold.dirty
    again = Fold(SETTINGS, ROUTES, path, clock)
    assert again.observe(alert()) == "folded"
    clock.advance(30)
    assert again.due() == []
    assert again.summary()["silences"][0]["matcher"] == {"title": "Other"}
    assert again.summary()["silences"][0]["author"] == "carol"
    assert again.summary()["silences"][0]["reason"] == "planned work"
    again.observe(alert(resolved=True))
    clock.advance(30)
    assert sent(again.due(), "all") == [("Disk space low", "resolved", 2)]


def test_unreadable_state_is_set_aside(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "fold.json"
    path.write_text("{torn")
    fold = Fold(SETTINGS, ROUTES, path, clock)
    assert fold.load_error is not None and "unreadable" in fold.load_error
    assert (tmp_path / "fold.unreadable").read_text() == "{torn"
    assert fold.alerts == {}


def test_unresolved_alerts_expire(fold: Fold, clock: Clock) -> None:
    fold.observe(alert())
    clock.advance(10)
    fold.due()
    clock.advance(3601)
    fold.due()
    assert fold.alerts == {} and fold.summary()["expired"] == 1


def test_active_for_lists_firing_alerts_a_channel_was_told_of(fold: Fold, clock: Clock) -> None:
    fold.observe(alert())
    fold.observe(alert(title="Disk full", severity="CRITICAL"))
    clock.advance(10)
    fold.due()
    assert [a["title"] for a in fold.active_for("crit")] == ["Disk full"]
    assert len(fold.active_for("all")) == 2


def test_beyond_max_alerts_the_least_recently_seen_are_forgotten(clock: Clock) -> None:
    fold = Fold(FoldSettings(max_alerts=10), ROUTES, clock=clock)
    for n in range(12):
        fold.observe(alert(f"Condition {n}", disk=str(n)))
        clock.advance(1)
    fold.observe(alert("Condition 0", disk="0"))  # seen again: now among the most recent
    fold.due()
    assert len(fold.alerts) == 10
    assert sorted(t.alert["title"] for t in fold.alerts.values()) == sorted(
        ["Condition 0", *(f"Condition {n}" for n in range(3, 12))]
    )
    assert fold.summary()["expired"] == 2
