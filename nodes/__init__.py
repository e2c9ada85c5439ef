"""The device's nodes, the `vv` verbs and their engines.

Importing this package registers every node's settings section with bus.config, so settings load
with all of them known (and an unknown one is refused) whichever verb or node runs."""

from nodes.alerter import settings as _alerter
from nodes.console import settings as _console
from nodes.disk import settings as _disk
from nodes.dvr import settings as _dvr
from nodes.ingest import settings as _ingest
from nodes.journal import settings as _journal
from nodes.monitor import settings as _monitor
from nodes.ops import settings as _supervisor
from nodes.reconciler import settings as _reconciler
from nodes.scan import settings as _scan
from nodes.sign import settings as _sign
from nodes.summarize import settings as _summarize

SETTINGS_MODULES = (
    _alerter,
    _console,
    _disk,
    _dvr,
    _ingest,
    _journal,
    _monitor,
    _supervisor,
    _reconciler,
    _scan,
    _sign,
    _summarize,
)
