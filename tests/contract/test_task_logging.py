"""`get_task_logger` at Celery's path: records from a task carry its id and name."""

from __future__ import annotations

import logging

import pytest

from conveyor import Celery
from conveyor.utils.log import get_task_logger
from tests.conftest import contract_app, store_url
from tests.contract.test_worker_contract import running

logger = get_task_logger(__name__)


@pytest.mark.parametrize("pool", ["threads", "solo", "asyncio"])
def test_records_logged_in_a_task_carry_its_id_and_name(tmp_path, pool: str, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    app: Celery = contract_app("logs", store_url("sqlite", tmp_path))

    @app.task(name="t.logs")
    def logs(x: int) -> int:
        logger.info("working on %d", x)
        return x

    try:
        with caplog.at_level(logging.INFO, logger=__name__), running(app, pool):
            result = logs.delay(7)
            assert result.get(timeout=10) == 7
        [record] = [r for r in caplog.records if r.name == __name__]
        assert record.getMessage() == "working on 7"
        assert record.task_id == result.id and record.task_name == "t.logs"  # type: ignore[attr-defined]
    finally:
        app.close()
    logger.info("outside a task")
    outside = [r for r in caplog.records if r.getMessage() == "outside a task"]
    assert outside == [] or outside[0].task_id == "???"  # type: ignore[attr-defined]
