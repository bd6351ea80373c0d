"""The garbage collector of a worker process (the `worker` command's, which is all the worker's).

A busy worker allocates a few dozen container objects per task: the message and its job, the
outcome, the row of its event. With CPython's default thresholds that is a young collection
every few dozen tasks and, as survivors pile up, full collections that walk everything the
process holds: the app, every module imported, the tasks held. On the default worker that
walking cost about as much as the whole of task events did, and grew with what the worker
holds (docs/architecture.md, "Batching I/O").

So the worker command, once the app and its tasks are loaded, moves everything loaded so far
to the permanent generation (`gc.freeze()`: never walked again, and shared, not copied, by the
prefork children forked from it), and collects young objects every `YOUNG_THRESHOLD`
allocations instead of 700. An in-process worker (`Worker(app).run()` in a program of its own) leaves the
program's collector alone. Receivers of `worker_init` run after this and may set their own.
"""

from __future__ import annotations

import gc

#: Allocations between two young collections in a worker process: CPython 3.13's default (3.11
#: and 3.12 collect every 700). Measured on the default worker, 10,000 saved no more, and
#: cost more where each task leaves reference cycles (results stored): they wait longer.
YOUNG_THRESHOLD = 2_000


def tune_for_worker() -> None:
    """Freeze what is loaded and collect young objects less often (never more often than now)."""
    gc.freeze()
    young, *older = gc.get_threshold()
    if young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, *older)
