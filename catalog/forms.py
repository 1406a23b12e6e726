"""The console's forms: they validate input, the services decide and write."""

from typing import Any

from django import forms

from catalog.models import Component, Environment


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
