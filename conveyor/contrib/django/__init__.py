"""Django integration: results in the project's own database.

Add `"conveyor.contrib.django"` to `INSTALLED_APPS`, run `manage.py migrate`,
and set `result_backend = "django-db"` (Celery's name; `django://<alias>`
picks another database alias). The tables are `conveyor_results` and
`conveyor_history`, the same layout the SQLAlchemy backend uses.
"""
