"""The console's forms: they validate input, the services decide and write."""

import re
from typing import Any

from django import forms

from catalog.models import Component, Environment

# As the API's training dataset request takes them (api/views_training.py).
FEATURE_NAME_MAX_LENGTH = 128


class ApproveForm(forms.Form):
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    # The plan the reviewer read: approval is refused when it changed since (a re-plan happened meanwhile).
    plan_hash = forms.CharField(required=False, max_length=64, widget=forms.HiddenInput)


class RejectForm(forms.Form):
    comment = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Say what must change; the author reads it.",
    )


class BackfillForm(forms.Form):
    environment = forms.ChoiceField(choices=Environment.Name.choices)
    source = forms.CharField(
        max_length=1024,
        widget=forms.TextInput(attrs={"size": 70, "placeholder": "/data/parquet or gs://bucket/prefix"}),
        help_text="A directory (or gs:// URI) laid out as {ASSET}/yyyy/mm/dd/HH/{component}.parquet.",
    )
    start_date = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end_date = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    components = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every component that has features in the environment.",
    )
    reason = forms.CharField(
        max_length=200, required=False, initial="requested from the console", widget=forms.TextInput(attrs={"size": 50})
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(c.key, f"{c.key} · {c.title}") for c in Component.objects.order_by("key")]
        self.fields["components"].choices = choices  # type: ignore[attr-defined]


class TrainingDatasetForm(forms.Form):
    """Only the shape of the request; training_dataset_request checks the file and the selection."""

    environment = forms.ChoiceField(choices=Environment.Name.choices)
    entities = forms.FileField(
        label="Entity file",
        widget=forms.ClearableFileInput(attrs={"accept": ".parquet,.csv"}),
        help_text="Parquet or CSV with the columns symbol, dte, event_timestamp, and optionally labels.",
    )
    components = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Every active feature of the ticked components.",
    )
    features = forms.CharField(
        label="Feature names",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "c1_alpha, c8_trend"}),
        help_text="Optional: one per line or comma separated. Nothing named and nothing ticked: every active feature.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(c.key, f"{c.key} · {c.title}") for c in Component.objects.order_by("key")]
        self.fields["components"].choices = choices  # type: ignore[attr-defined]

    def clean_features(self) -> list[str]:
        """The list the API takes, as the API limits its items (whether each is a feature is the service's call)."""
        names = [n.strip() for n in re.split(r"[,\n]", self.cleaned_data["features"] or "") if n.strip()]
        too_long = [n for n in names if len(n) > FEATURE_NAME_MAX_LENGTH]
        if too_long:
            raise forms.ValidationError(
                f"{too_long[0][:40]!r}…: a feature name has at most {FEATURE_NAME_MAX_LENGTH} characters",
                code="max_length",
            )
        return names
