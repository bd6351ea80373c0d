"""Helpers for testing code that uses Conveyor, at Celery's paths (`conveyor.contrib.testing.worker`)."""
