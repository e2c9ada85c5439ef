"""Home Assistant MQTT discovery for the device's node health, published by the monitor.

Home Assistant, connected to the edge broker, creates one sensor per node from a retained config on
`homeassistant/sensor/vv_<device>/<node>_health/config`: its state is the node's health `status`,
read from our own retained health topic, and its availability comes from the same topic, whose
last will (LWT) writes `offline` when the node's connection dies. Nothing new is published per
beat; only the configs, once per node (retained, so Home Assistant finds them whenever it starts).
"""

from __future__ import annotations

from typing import Any

from bus.topics import health_topic

PREFIX = "homeassistant"  # Home Assistant's default discovery prefix


def discovery_filter(device: str) -> str:
    """Every config topic of `device` (its monitor's write grant; readers' read grant)."""
    return f"{PREFIX}/sensor/vv_{device}/#"


def config_topic(device: str, node: str) -> str:
    return f"{PREFIX}/sensor/vv_{device}/{node}_health/config"


def sensor_config(device: str, node: str, version: str) -> dict[str, Any]:
    """The discovery payload of `node`'s health sensor on `device`."""
    topic = health_topic(device, node)
    return {
        "name": f"{node} health",
        "unique_id": f"vv_{device}_{node}_health",
        "object_id": f"vv_{device}_{node}_health",
        "state_topic": topic,
        "value_template": "{{ value_json.status }}",
        "json_attributes_topic": topic,
        "json_attributes_template": "{{ value_json.details | tojson }}",
        "availability": [
            {
                "topic": topic,
                "value_template": "{{ 'offline' if value_json.status == 'offline' else 'online' }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ],
        "icon": "mdi:heart-pulse",
        "device": {
            "identifiers": [f"vv_{device}"],
            "name": f"VV Edge {device}",
            "manufacturer": "VV Edge",
            "sw_version": version,
        },
        "origin": {"name": "VV Edge"},
    }
