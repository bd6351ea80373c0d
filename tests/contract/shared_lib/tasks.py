"""Library code as Celery users write it: tasks with no app imported."""

from conveyor import shared_task


@shared_task
def multiply(x: int, y: int) -> int:
    return x * y


@shared_task(bind=True, name="lib.retrying", max_retries=3, default_retry_delay=0.05)
def retrying(self, succeed_on: int) -> int:  # type: ignore[no-untyped-def]
    if self.request.retries < succeed_on:
        raise self.retry(exc=ValueError("not yet"))
    return self.request.retries  # type: ignore[no-any-return]
