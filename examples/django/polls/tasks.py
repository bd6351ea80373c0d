from django.contrib.auth.models import User

from conveyor import shared_task


@shared_task
def add(x, y):
    return x + y


@shared_task(bind=True)
def count_users(self):
    # The ORM works in the worker: Django was set up before the tasks were imported.
    return {"task": self.name, "users": User.objects.count()}
