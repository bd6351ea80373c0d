"""Rate limits: a task over its limit goes back to the broker until its next token is due.

The token buckets are in the broker's state store, shared by every worker. A
limit set at run time (`app.control.rate_limit`) overrides the task's
configured `rate_limit`; each tick reads those, so a change reaches every
worker within `TICK_SECONDS`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from conveyor.config import parse_rate
from conveyor.exceptions import BrokerError
from conveyor.execution import option
from conveyor.worker.hooks import Held, Hook

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")


class RateLimits(Hook):
    def __init__(self) -> None:
        self._set: dict[str, str] = {}  # set at run time, by task name
        self._local: dict[str, str] = {}  # set at run time for this worker only
        self._rates: dict[str, float | None] = {}  # tasks per second, by task name (None: no limit)

    def start(self, worker: Worker) -> None:
        self.worker = worker
        self.tick(0.0)  # before the first delivery

    def admit(self, arrivals: list[Held]) -> list[Held]:
        admitted = []
        for held in arrivals:
            wait = self._wait(held.job.message.task)
            if wait > 0:
                # Back to the broker until a token is due: it holds no pool slot meanwhile.
                self.worker.ledger.defer(held, wait)
            else:
                admitted.append(held)
        return admitted

    def _wait(self, name: str) -> float:
        """Seconds until this task may start under its rate limit (0: now)."""
        rates = self._rates
        if name not in rates:
            task, conf = self.worker.app.tasks.get(name), self.worker.app.conf
            limit = self._local.get(name) or self._set.get(name)
            rates[name] = parse_rate(limit or option(task, "rate_limit", conf.task_default_rate_limit))
        rate = rates[name]
        if rate is None:
            return 0.0
        try:
            return self.worker.app.state.take_token(f"rate:{name}", rate)
        except BrokerError as exc:
            logger.error("Could not take a rate-limit token for %s (running it anyway): %s", name, exc)
            return 0.0

    def override(self, name: str, rate: str | None) -> None:
        """Set a task's limit on this worker only, until it restarts (None: back to the shared one)."""
        if rate is not None:
            parse_rate(rate)
        local = {key: value for key, value in self._local.items() if key != name}
        if rate is not None:
            local[name] = rate
        logger.warning("Rate limit of %s set to %s on this worker", name, rate or "its shared value")
        self._local = local
        self._rates = {}

    def tick(self, now: float) -> None:
        try:
            limits = self.worker.app.control.rate_limits()  # those whose signature holds, with signing on
        except BrokerError:
            return  # the next tick will tell; the fetcher already logs a lost broker
        if limits == self._set:
            return
        for name in sorted(limits.keys() | self._set.keys()):
            if limits.get(name) != self._set.get(name):
                logger.warning("Rate limit of %s set to %s", name, limits.get(name, "its configured value"))
        self._set = dict(limits)
        for name, rate in limits.items():
            try:
                parse_rate(rate)
            except ValueError as exc:  # written by something other than control.rate_limit
                logger.error("Ignoring the rate limit set for %s: %s", name, exc)
                del self._set[name]
        self._rates = {}  # replaced, not cleared: the loop may be reading the old one
