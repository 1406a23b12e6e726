from django.contrib import admin

from catalog.admin import ReadOnlyAdmin
from provisioning.models import ProvisioningRun


@admin.register(ProvisioningRun)
class ProvisioningRunAdmin(ReadOnlyAdmin):
    list_display = ["id", "environment", "revision", "state", "attempts", "claimed_by", "created_at", "finished_at"]
    list_filter = ["environment", "state"]
