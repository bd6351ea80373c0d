"""Task results and their history: the tables `conveyor_results` and `conveyor_history`."""

from django.db import models


class TaskResult(models.Model):
    """A task's current state and meta (the serialized result record)."""

    task_id = models.CharField(max_length=255, primary_key=True)
    state = models.CharField(max_length=50)
    meta = models.BinaryField()
    expires_at = models.FloatField(null=True, db_index=True)

    class Meta:
        db_table = "conveyor_results"

    def __str__(self) -> str:
        return f"{self.task_id}: {self.state}"


class TaskHistory(models.Model):
    """One history entry of a task, in insertion order; an entry is recorded once."""

    task_id = models.CharField(max_length=255, db_index=True)
    digest = models.CharField(max_length=40)
    entry = models.BinaryField()

    class Meta:
        db_table = "conveyor_history"
        constraints = [models.UniqueConstraint(fields=["task_id", "digest"], name="conveyor_history_once")]
