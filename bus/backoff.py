"""Capped exponential backoff with full jitter, so a fleet does not reconnect in lockstep."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, minimum: float, maximum: float, factor: float = 2.0) -> None:
        self.minimum, self.maximum, self.factor = minimum, maximum, factor
        self.attempt = 0

    def next_delay(self) -> float:
        cap = min(self.maximum, self.minimum * self.factor**self.attempt)
        self.attempt += 1
        return random.uniform(self.minimum, max(self.minimum, cap))

    def reset(self) -> None:
        self.attempt = 0
