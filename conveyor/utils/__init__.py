"""Helpers at Celery's module paths (`conveyor.utils.log`)."""
