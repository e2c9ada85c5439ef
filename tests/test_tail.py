"""`vv tail` outlives a broker restart, as the nodes do, and says so on stderr."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, VV, Publisher, wait_until


def test_tail_reconnects_after_the_broker_restarts(vv: VV) -> None:
    err = vv.home / "tail.err"
    vv.home.mkdir(parents=True, exist_ok=True)
    with err.open("w") as stderr:
        tail = subprocess.Popen(
            [sys.executable, "-m", "nodes.cli", "tail", "video.new", "--json", "--count", "1"],
            env=vv.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            wait_until(lambda: "live on" in err.read_text(), 10, "tail subscribed")
            vv.broker.kill()
            wait_until(lambda: "connection lost" in err.read_text(), 15, "tail to notice the outage")
            assert tail.poll() is None  # still running, not exited
            vv.broker.start()
            wait_until(lambda: "live again" in err.read_text(), 30, "tail back on the restarted broker")
            publisher = Publisher(vv.broker.port, *vv.admin())
            data = json.loads((REPO / "schemas/fixtures/video.new/valid-1.json").read_text())
            event = publisher.event("video.new", data, subject=data["video"]["id"])
            publisher.publish(event)
            publisher.close()
            out, _ = tail.communicate(timeout=15)
        finally:
            tail.kill()
    assert tail.returncode == 0
    assert json.loads(out.splitlines()[0])["payload"]["id"] == event.id
