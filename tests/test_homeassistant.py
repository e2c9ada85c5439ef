"""Home Assistant MQTT discovery from the real monitor on a real broker: retained configs per node,
readable with the device's read-only credential (Home Assistant's login), and the sensors'
templates (rendered with Jinja, as Home Assistant renders them) following our health topic and LWT."""

from __future__ import annotations

import json
import signal
from typing import Any

import jinja2
from conftest import DEVICE, VV, Probe, wait_until
from test_monitor import MONITOR_ENV

from nodes.monitor.homeassistant import config_topic


def render(template: str, doc: dict[str, Any]) -> str:
    return jinja2.Environment().from_string(template).render(value_json=doc)


def test_discovery_configs_follow_health_and_the_lwt(vv: VV, probe: Probe) -> None:
    # discovery on: `vv broker` re-renders the ACL (the monitor may write the configs), mosquitto reloads it
    vv.env["VV_MONITOR_HOMEASSISTANT"] = "true"
    rendered = vv.vv("broker", "--print-config")
    assert rendered.returncode == 0, rendered.stderr
    assert vv.broker.proc is not None
    vv.broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "Reloading config" in vv.broker.log_path.read_text(), 10, "mosquitto to reload")

    ha = vv.probe("homeassistant/#", username=DEVICE)  # Home Assistant's login: the device's read-only one
    monitor = vv.spawn("run", "monitor", extra_env=MONITOR_ENV)
    probe.wait_health("monitor", "online")
    topic = config_topic(DEVICE, "monitor")
    wait_until(lambda: ha.payloads(topic), 15, "the monitor's discovery config")
    [(_, payload, _)] = ha.payloads(topic)
    config = json.loads(payload)
    assert (
        config["state_topic"] == f"vv/{DEVICE}/health/monitor"
        and config["unique_id"] == f"vv_{DEVICE}_monitor_health"
    )
    [availability] = config["availability"]
    assert availability["topic"] == config["state_topic"]

    online = probe.wait_health("monitor", "online")
    assert render(config["value_template"], online) == "online"
    assert render(availability["value_template"], online) == availability["payload_available"]
    assert json.loads(render(config["json_attributes_template"], online)) == online["details"]

    monitor.send_signal(signal.SIGKILL)  # the broker publishes its last will: offline, on the same topic
    monitor.wait(10)
    will = probe.wait_health("monitor", "offline")
    assert render(availability["value_template"], will) == availability["payload_not_available"]

    late = vv.probe("homeassistant/#", username=DEVICE)  # Home Assistant starting later finds it retained
    wait_until(lambda: late.payloads(topic), 10, "the retained config")
    assert late.payloads(topic)[0][2] is True
    ha.close()
    late.close()


def test_no_discovery_by_default(vv: VV, probe: Probe) -> None:
    ha = vv.probe("homeassistant/#", username=DEVICE)
    vv.spawn("run", "monitor", extra_env=MONITOR_ENV)
    probe.wait_health("monitor", "online")
    probe.wait_health("monitor", "online", after=len(probe.health("monitor")))  # a later beat: it has run
    assert ha.received == []
    ha.close()
