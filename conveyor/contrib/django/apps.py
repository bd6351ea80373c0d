from django.apps import AppConfig


class ConveyorConfig(AppConfig):
    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "Conveyor task results"
    default_auto_field = "django.db.models.BigAutoField"
