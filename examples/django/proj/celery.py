import os

from conveyor import Celery

# The Django settings module for the `conveyor` command line.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")

# Settings come from Django's settings; CELERY_ names are Celery's (CELERY_BROKER_URL -> broker_url).
app.config_from_object("django.conf:settings", namespace="CELERY")

# Each installed app's tasks module, imported when the worker starts.
app.autodiscover_tasks()
