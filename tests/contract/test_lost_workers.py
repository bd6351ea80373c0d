"""A peer's vanished heartbeat: its unfinished acknowledged tasks end FAILURE, finished ones keep their result."""

from __future__ import annotations

import json
import time

import pytest

from conveyor import Celery, states
from conveyor.exceptions import WorkerLostError
from tests.contract.test_remote_control import app, running  # noqa: F401 - the fixture over every broker


def test_the_unfinished_tasks_of_a_vanished_peer_fail_and_the_finished_keep_their_result(app: Celery) -> None:  # noqa: F811
    backend = app.backend
    backend.write([backend.make_update("was-running", states.STARTED, {"pid": 1}),
                   backend.make_update("had-finished", states.SUCCESS, 42)])  # fmt: skip
    info = {"hostname": "ghost@ctl", "acked_running": ["was-running", "had-finished", "never-stored"]}
    app.state.register_worker("ghost@ctl", json.dumps(info).encode(), 60)
    with running(app):
        time.sleep(2.5)  # the worker has seen the ghost's heartbeat
        app.state.unregister_worker("ghost@ctl")
        with pytest.raises(WorkerLostError, match="ghost@ctl"):
            app.AsyncResult("was-running").get(timeout=10)
        with pytest.raises(WorkerLostError):
            app.AsyncResult("never-stored").get(timeout=10)
        assert app.AsyncResult("had-finished").get(timeout=1) == 42
