"""Reference data every installation has: environments, the entity type, component teams and components."""

from typing import Any, TypedDict


class KeyColumn(TypedDict):
    name: str
    dtype: str


class EntityTypeData(TypedDict):
    name: str
    description: str
    key_columns: list[KeyColumn]
    id_template: str


ENVIRONMENTS = (
    # name, approvals a breaking change needs
    ("dev", 1),
    ("staging", 1),
    ("prod", 2),
)

ENTITY_TYPE: EntityTypeData = {
    "name": "instrument_minute",
    "description": "One instrument (index option chain of a symbol at one days-to-expiry) in one minute.",
    "key_columns": [
        {"name": "symbol", "dtype": "STRING"},
        {"name": "ts_minute", "dtype": "TIMESTAMP"},
        {"name": "dte", "dtype": "INT64"},
    ],
    "id_template": "${symbol}_${yyyymmddHHMM}_${dte}",
}

# component key, title, owning team slug, team name
COMPONENTS = (
    ("c1", "Triple rolling straddle", "team-straddle", "Triple straddle team"),
    ("c2", "Greeks sentiment", "team-greeks", "Greeks sentiment team"),
    ("c3", "OI and price-action trending", "team-oi-pa", "OI and price-action team"),
    ("c4", "IV skew percentiles", "team-iv-skew", "IV skew team"),
    ("c5", "ATR, EMA and CPR", "team-atr-ema-cpr", "ATR, EMA and CPR team"),
    ("c6", "Correlation and predictive", "team-correlation", "Correlation team"),
    ("c7", "Support and resistance", "team-sr-levels", "Support and resistance team"),
    ("c8", "Master integration", "team-master", "Master integration team"),
)

ROLE_GROUPS = ("viewer", "registrar", "reviewer")


def reference_data_ensure(apps: Any, gcp_project: str = "arched-bot-269016", region: str = "us-central1") -> None:
    """Creates what is missing; never changes what exists (safe in a migration and at every start)."""
    environment = apps.get_model("catalog", "Environment")
    entity_type = apps.get_model("catalog", "EntityType")
    team = apps.get_model("catalog", "Team")
    component = apps.get_model("catalog", "Component")
    group = apps.get_model("auth", "Group")
    for name, approvals in ENVIRONMENTS:
        environment.objects.get_or_create(
            name=name, defaults={"gcp_project": gcp_project, "region": region, "breaking_approvals_required": approvals}
        )
    et, _ = entity_type.objects.get_or_create(
        name=ENTITY_TYPE["name"],
        defaults={k: v for k, v in ENTITY_TYPE.items() if k != "name"},
    )
    for key, title, slug, team_name in COMPONENTS:
        owner, _ = team.objects.get_or_create(slug=slug, defaults={"name": team_name})
        component.objects.get_or_create(key=key, defaults={"title": title, "entity_type": et, "owner": owner})
    for role in ROLE_GROUPS:
        group.objects.get_or_create(name=role)
