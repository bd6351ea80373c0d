import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only"
DEBUG = True
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "conveyor.contrib.django",  # the django-db result backend's tables
    "polls",
]
# PostgreSQL when EXAMPLE_POSTGRES names a database (as a deployment would), else a SQLite file.
DATABASES = {
    "default": (
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["EXAMPLE_POSTGRES"],
            "USER": os.environ.get("EXAMPLE_POSTGRES_USER", "postgres"),
            "HOST": os.environ.get("EXAMPLE_POSTGRES_HOST", "127.0.0.1"),
            "PORT": os.environ.get("EXAMPLE_POSTGRES_PORT", "5432"),
        }
        if os.environ.get("EXAMPLE_POSTGRES")
        else {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("EXAMPLE_DJANGO_DB", str(BASE_DIR / "db.sqlite3")),
        }
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CELERY_BROKER_URL = os.environ.get("EXAMPLE_BROKER_URL", f"sqlite:///{BASE_DIR / 'queue.db'}")
CELERY_BROKER_TRANSPORT_OPTIONS = json.loads(os.environ.get("EXAMPLE_TRANSPORT_OPTIONS") or "{}")
CELERY_RESULT_BACKEND = "django-db"
CELERY_TASK_SERIALIZER = "json"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True  # a Celery setting without effect here: accepted
