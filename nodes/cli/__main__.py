"""`python -m nodes.cli`: the `vv` command without its console script (tests, a fresh checkout)."""

import sys

from nodes.cli import main

sys.exit(main())
