import datetime as dt
from typing import Any

import django_filters
from django import forms
from django.db.models import Q, QuerySet
from django_filters.fields import IsoDateTimeField

from catalog import rules
from catalog.models import AuditLogEntry, ChangeRequest, Component, Environment, Feature
from provisioning.models import ProvisioningRun


class StrictBooleanField(forms.NullBooleanField):
    """`true`/`false` (or 1/0); anything else is an error naming the parameter, not a silently ignored filter."""

    widget = forms.TextInput
    default_error_messages = {"invalid": "Must be true or false."}

    def to_python(self, value: Any) -> bool | None:  # type: ignore[override]  # NullBooleanField returns None too
        if value in (None, ""):
            return None
        text = str(value).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise forms.ValidationError(self.error_messages["invalid"], code="invalid")

    def validate(self, value: Any) -> None:
        pass


class StrictBooleanFilter(django_filters.BooleanFilter):
    field_class = StrictBooleanField


class FeatureFilter(django_filters.FilterSet):
    # By id, not by a join on the name: the (environment, component, name) index then serves filter and order.
    environment = django_filters.ModelChoiceFilter(
        field_name="environment", to_field_name="name", queryset=Environment.objects.all()
    )
    component = django_filters.ModelChoiceFilter(
        field_name="component", to_field_name="key", queryset=Component.objects.all()
    )
    owner = django_filters.CharFilter(field_name="owner__slug")
    online = StrictBooleanFilter()
    status = django_filters.ChoiceFilter(choices=Feature.Status.choices)
    dtype = django_filters.ChoiceFilter(choices=[(d, d) for d in rules.DTYPES])
    name = django_filters.CharFilter()
    tag = django_filters.CharFilter(method="filter_tag")
    search = django_filters.CharFilter(method="filter_search", help_text="Text in the name, description or source.")

    class Meta:
        model = Feature
        fields = ["environment", "component", "owner", "online", "status", "dtype", "name"]

    def filter_search(self, queryset: QuerySet[Feature], name: str, value: str) -> QuerySet[Feature]:
        return queryset.filter(Q(name__icontains=value) | Q(description__icontains=value) | Q(source__icontains=value))

    def filter_tag(self, queryset: QuerySet[Feature], name: str, value: str) -> QuerySet[Feature]:
        # JSON containment is not portable to SQLite; tags are short, so match the quoted tag in the JSON text.
        return queryset.filter(tags__icontains=f'"{value}"')


class ChangeRequestFilter(django_filters.FilterSet):
    environment = django_filters.CharFilter(field_name="environment__name")
    state = django_filters.MultipleChoiceFilter(choices=ChangeRequest.State.choices)
    author = django_filters.CharFilter(field_name="author__username")
    is_breaking = StrictBooleanFilter()

    class Meta:
        model = ChangeRequest
        fields = ["environment", "state", "author", "is_breaking"]


class ProvisioningRunFilter(django_filters.FilterSet):
    environment = django_filters.CharFilter(field_name="environment__name")
    state = django_filters.ChoiceFilter(choices=ProvisioningRun.State.choices)

    class Meta:
        model = ProvisioningRun
        fields = ["environment", "state", "change_request"]


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 instant, in UTC. ISO 8601 allows offsets up to 23:59; PostgreSQL refuses any beyond 15:59
    (a server error, not a 400), and an instant near year 1 or 9999 may not exist in UTC at all."""

    def to_python(self, value: Any) -> dt.datetime | None:
        instant: dt.datetime | None = super().to_python(value)
        if instant is None:
            return None
        try:
            return instant.astimezone(dt.UTC)
        except OverflowError:
            raise forms.ValidationError("the instant is out of range", code="out_of_range") from None


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class AuditLogFilter(django_filters.FilterSet):
    actor = django_filters.CharFilter(field_name="actor_name")
    action = django_filters.CharFilter()
    action_prefix = django_filters.CharFilter(field_name="action", lookup_expr="startswith")
    since = UtcIsoDateTimeFilter(field_name="at", lookup_expr="gte")
    until = UtcIsoDateTimeFilter(field_name="at", lookup_expr="lt")

    class Meta:
        model = AuditLogEntry
        fields = ["actor", "action", "object_type", "object_id", "environment"]
