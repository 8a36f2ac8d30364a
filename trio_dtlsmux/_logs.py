"""What the endpoint tells the standard ``logging`` module.

Handshake failures are what an operator needs to see to find a
misconfigured client or an attack, and what a flood of spoofed or broken
hellos would turn into gigabytes of log. So each failure is logged at INFO
on the ``trio_dtlsmux`` logger with the peer's address, the failure kind and
the reason, through a token bucket: bursts of up to ``burst`` lines, then
``per_second`` lines a second, and a count of the lines left out in the
next line that is written. The time is passed in (the endpoint's clock).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["FailureLog", "logger"]

logger = logging.getLogger("trio_dtlsmux")


class FailureLog:
    """Rate-limited log lines for failed handshakes."""

    def __init__(
        self,
        *,
        burst: int = 20,
        per_second: float = 2.0,
        log: logging.Logger = logger,
    ) -> None:
        self._burst = burst
        self._rate = per_second
        self._tokens = float(burst)
        self._updated: float | None = None
        self._log = log
        #: Lines left out since the last one written.
        self.suppressed = 0

    def handshake_failed(self, address: Any, kind: str, reason: str, now: float) -> bool:
        """Log one failure if the bucket allows; returns whether it did."""
        if not self._log.isEnabledFor(logging.INFO):
            return False
        if self._updated is not None:
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(float(self._burst), self._tokens + elapsed * self._rate)
        self._updated = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return False
        self._tokens -= 1.0
        if self.suppressed:
            self._log.info(
                "handshake with %r failed (%s): %s [%d more failures not logged]",
                address,
                kind,
                reason,
                self.suppressed,
            )
            self.suppressed = 0
        else:
            self._log.info("handshake with %r failed (%s): %s", address, kind, reason)
        return True
