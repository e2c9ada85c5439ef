"""A node that crashes on every start (in setup, before it ever connects): the supervisor's crash loop."""

from __future__ import annotations

from bus.node import Node


class Crashy(Node):
    name = "crashy"

    async def setup(self) -> None:
        raise RuntimeError("crashy: broken on purpose")
