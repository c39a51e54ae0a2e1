from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.http import HttpResponse, JsonResponse
from django.urls import path


def index(request):
    applied = MigrationRecorder(connection).migration_qs.count()
    return HttpResponse(f"hello from django: {applied} migrations applied\n")


def health(request):
    return JsonResponse({"database": connection.settings_dict["NAME"]})


urlpatterns = [path("", index), path("health", health)]
