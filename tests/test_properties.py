"""Property tests (hypothesis) of spec validation, plans and DDL generation.

Specs are generated from the rules the validator enforces (catalog/rules.py and the spec schema): valid names,
dtypes, TTLs, sources, tags, online flags, for the real components and teams, a few features each to stay fast.
Then:

- any document (arbitrary JSON/YAML-like values, and valid specs with one part broken) either validates or is
  rejected with located problems, never an exception;
- a spec planned against the state it produced plans nothing;
- planning A -> B and applying it (plan_apply, the path of an approved change request) leaves the catalog in
  state B, which then plans nothing;
- the plan of A -> B (its classification and its hash) does not depend on the order of features or specs;
- a hostile feature name is rejected with a located problem, or reaches the DDL only as exactly that quoted
  identifier, and a description only as exactly that string literal.

Reproducible: derandomized, without hypothesis's example database.
"""

import copy
import json
import string
from pathlib import Path
from typing import Any

import pytest
import sqlglot
import yaml
from django.conf import settings as django_settings
from django.db import transaction
from django.test import Client
from django.utils.html import escape
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from catalog import plans, rules
from catalog.errors import SpecValidationError
from catalog.models import Environment, Feature
from catalog.services import change_request_plan, plan_apply
from catalog.specs import (
    SPEC_SCHEMA,
    CatalogContext,
    ComponentSpec,
    load_spec_files,
    specs_as_dicts,
    validate_submission,
)
from provisioning.ddl import (
    KEY_COLUMNS,
    Column,
    TableSpec,
    add_columns_sql,
    create_table_sql,
    online_source_view_sql,
    to_duckdb,
    training_view_sql,
)
from tests.conftest import mini_spec

REAL_SPECS = load_spec_files(Path(django_settings.FCC_SPECS_DIR))
COMPONENTS = {s["component"]: s["entity_type"] for s in REAL_SPECS}
OWNERS = {s["component"]: s["owner"] for s in REAL_SPECS}
TEAMS = frozenset(OWNERS.values())
CONTEXT = CatalogContext(teams=TEAMS, entity_types=frozenset(COMPONENTS.values()), components=COMPONENTS)
KEY_NAMES = frozenset(name for name, _, _ in KEY_COLUMNS)

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None)
ON_DB = settings(
    # No shrinking on the database: on a loaded machine it can take minutes; the failing example is still shown.
    phases=[Phase.explicit, Phase.generate],
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- Strategies from the spec rules ------------------------------------------------------------------------------


def _is_valid_name(name: str) -> bool:
    return (
        rules.NAME_PATTERN.fullmatch(name) is not None
        and len(name) <= rules.NAME_MAX_LENGTH
        and name not in rules.BIGQUERY_RESERVED_WORDS
        and name not in rules.RESERVED_COLUMN_NAMES
        and name not in KEY_NAMES
        and not rules.VERSION_SUFFIX.search(name)
    )


# Short names: the rules, not the length, are what is exercised (long names have their own examples below).
names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True).filter(_is_valid_name)
sources = st.from_regex(r"[A-Za-z][A-Za-z0-9_.:/-]{0,15}", fullmatch=True)
tags = st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), max_size=3)
ttls = st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 999), st.sampled_from(sorted(rules.TTL_UNITS))).filter(
    lambda t: rules.TTL_MIN_SECONDS <= (rules.ttl_parse(t) or 0) <= rules.TTL_MAX_SECONDS
)
# Storable text: no NUL, no unpaired surrogate (the validator rejects those; see the hostile tests).
texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)


@st.composite
def feature_docs(draw: st.DrawFn, component: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        # Prefixed with the component: names and sources are unique across the catalog.
        "name": f"{component}_{draw(names)}",
        "dtype": draw(st.sampled_from(sorted(rules.DTYPES))),
        "ttl": draw(ttls),
        "source": f"{component}.{draw(sources)}",
    }
    for key, strategy in (("description", texts), ("online", st.booleans()), ("tags", tags)):
        if draw(st.booleans()):
            doc[key] = draw(strategy)
    return doc


@st.composite
def spec_docs(draw: st.DrawFn, component: str | None = None, max_features: int = 5) -> dict[str, Any]:
    component = component or draw(st.sampled_from(sorted(COMPONENTS)))
    features = draw(
        st.lists(
            feature_docs(component),
            min_size=1,
            max_size=max_features,
            unique_by=(lambda f: f["name"], lambda f: f["source"]),
        )
    )
    doc = {
        "component": component,
        "entity_type": COMPONENTS[component],
        "owner": draw(st.sampled_from(sorted(TEAMS))),
        "features": features,
    }
    if draw(st.booleans()):
        doc["title"] = draw(texts)
    return doc


submissions = st.lists(spec_docs(), min_size=1, max_size=3, unique_by=lambda s: s["component"]).map(
    lambda specs: {"specs": specs}
)


def _valid(payload: dict[str, Any]) -> list[ComponentSpec]:
    specs, problems = validate_submission(payload, CONTEXT)
    assert problems == [], problems  # the strategies only make valid specs
    return specs


def _state(specs: list[ComponentSpec]) -> dict[str, plans.ComponentState]:
    """The catalog state applying `specs` to an empty environment produces: every feature active, version 1."""
    return {
        spec.component: plans.ComponentState(
            key=spec.component,
            owner=spec.owner,
            table_exists=True,
            features=tuple(
                plans.FeatureState(
                    f.name,
                    f.dtype,
                    f.description,
                    f.ttl_seconds,
                    f.online,
                    f.source,
                    f.tags,
                    spec.owner,
                    "active",
                    1,
                    f.name,
                )
                for f in spec.features
            ),
        )
        for spec in specs
    }


def _plan(specs: list[ComponentSpec], state: dict[str, plans.ComponentState]) -> dict[str, Any]:
    return plans.compute_plan(environment="dev", base_revision=1, dataset_exists=True, specs=specs, state=state)


# --- (a) validation never raises; problems are located --------------------------------------------------------

# What JSON and YAML documents hold (YAML's safe loader also makes dates and timestamps).
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.dates()
    | st.datetimes()
    | st.sampled_from(["c1", "instrument_minute", "team-straddle", "float64", "48h", "", "\x00", "\ud800"])
)
json_like = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
)
spec_keys = sorted(SPEC_SCHEMA["properties"]) + sorted(SPEC_SCHEMA["properties"]["features"]["items"]["properties"])


@st.composite
def broken_submissions(draw: st.DrawFn) -> Any:
    """A valid submission with one part replaced, removed or added: arbitrary values where the schema wants
    specific ones, at every depth."""
    payload = draw(submissions)
    # Every container in the document, with a way to change it.
    containers: list[Any] = [payload, payload["specs"]]
    for spec in payload["specs"]:
        containers += [spec, spec["features"], *spec["features"]]
        containers += [f["tags"] for f in spec["features"] if "tags" in f]
    target = draw(st.sampled_from(containers))
    if isinstance(target, dict):
        key = draw(st.sampled_from(sorted(target)) | st.sampled_from(spec_keys) | st.text(max_size=8))
        if draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = draw(json_like)
    elif target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = draw(json_like)
    else:
        target.append(draw(json_like | st.sampled_from(copy.deepcopy(target) or [None])))
    return payload


def _assert_validates_or_locates(payload: Any) -> None:
    specs, problems = validate_submission(payload, CONTEXT)
    if problems:
        assert specs == []
        for problem in problems:
            assert isinstance(problem.path, str), problem
            assert problem.path, problem
            assert isinstance(problem.rule, str), problem
            assert problem.rule, problem
            assert isinstance(problem.detail, str), problem
            assert problem.detail, problem
            json.dumps(problem.as_dict())  # the API can render it
    else:
        assert specs, payload
        assert all(isinstance(s, ComponentSpec) for s in specs)


@FAST
@given(json_like)
def test_any_document_validates_or_is_rejected_with_located_problems(document):
    for payload in (document, {"specs": document}, {"specs": [document]}):
        _assert_validates_or_locates(payload)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(broken_submissions())
def test_broken_specs_are_rejected_with_located_problems(payload):
    _assert_validates_or_locates(payload)


@FAST
@given(broken_submissions())
def test_yaml_documents_validate_or_are_rejected_with_located_problems(payload):
    # A spec file is YAML: what the safe loader makes of a (broken) spec validates or is rejected the same way.
    _assert_validates_or_locates(yaml.safe_load(yaml.safe_dump(payload, allow_unicode=True)))


# --- (b) a spec planned against its own state plans nothing ----------------------------------------------------


@FAST
@given(submissions)
def test_planning_specs_against_their_own_state_is_empty(payload):
    specs = _valid(payload)
    plan = _plan(specs, _state(specs))
    assert plan["is_empty"], plans.plan_text(plan)
    assert plan["changes"] == []
    assert plan["component_changes"] == []
    assert plan["steps"] == []
    # The normalised specs (what a change request stores) mean the same: they plan nothing either.
    assert _plan(_valid({"specs": specs_as_dicts(specs)}), _state(specs))["is_empty"]


# --- (c), (d) plans from A to B ----------------------------------------------------------------------------------


@st.composite
def transitions(draw: st.DrawFn, max_features: int = 5) -> tuple[dict[str, Any], dict[str, Any]]:
    """Specs A of one component, and B: A with features kept, changed (each field), renamed (a new name for the
    same source), removed and added, and maybe another owner."""
    component = draw(st.sampled_from(sorted(COMPONENTS)))
    a = draw(spec_docs(component, max_features))
    b = copy.deepcopy(a)
    b["owner"] = draw(st.sampled_from([a["owner"], *sorted(TEAMS)]))
    features = []
    used_names = {f["name"] for f in a["features"]}
    used_sources = {f["source"] for f in a["features"]}
    for feature in b["features"]:
        action = draw(st.sampled_from(["keep", "change", "rename", "remove"]))
        if action == "remove":
            continue
        if action == "change":
            key = draw(st.sampled_from(["dtype", "ttl", "online", "description", "tags", "source"]))
            new = draw(
                {
                    "dtype": st.sampled_from(sorted(rules.DTYPES)),
                    "ttl": ttls,
                    "online": st.booleans(),
                    "description": texts,
                    "tags": tags,
                    "source": st.just(f"{component}.{draw(sources)}"),
                }[key]
            )
            if key == "source":
                if new in used_sources:
                    continue  # two features mapping one source: not a valid B
                used_sources.add(new)
            feature[key] = new
        if action == "rename":
            name = f"{component}_{draw(names)}"
            if name in used_names:
                continue
            used_names.add(name)
            feature["name"] = name
        features.append(feature)
    for extra in draw(st.lists(feature_docs(component), max_size=2)):
        if extra["name"] not in used_names and extra["source"] not in used_sources:
            used_names.add(extra["name"])
            used_sources.add(extra["source"])
            features.append(extra)
    if not features:
        features.append(a["features"][0])
    b["features"] = draw(st.permutations(features))
    return a, b


def _without_order(plan: dict[str, Any]) -> dict[str, Any]:
    """What a plan says, whatever the order features and specs were listed in."""
    return {
        "changes": sorted(json.dumps(c, sort_keys=True) for c in plan["changes"]),
        "component_changes": sorted(json.dumps(c, sort_keys=True) for c in plan["component_changes"]),
        "summary": plan["summary"],
        "is_breaking": plan["is_breaking"],
        "hash": plans.plan_hash(plan),
    }


@FAST
@given(transitions(), st.randoms(use_true_random=False))
def test_plan_classification_and_hash_ignore_feature_order(transition, random):
    a, b = transition
    specs_a, specs_b = _valid({"specs": [a]}), _valid({"specs": [b]})
    plan = _plan(specs_b, _state(specs_a))

    shuffled_b = copy.deepcopy(b)
    random.shuffle(shuffled_b["features"])
    state = _state(specs_a)
    shuffled_state = {
        key: plans.ComponentState(c.key, c.owner, c.table_exists, tuple(random.sample(c.features, len(c.features))))
        for key, c in state.items()
    }
    reordered = _plan(_valid({"specs": [shuffled_b]}), shuffled_state)
    assert _without_order(reordered) == _without_order(plan)
    by_feature = {(c["feature"], c["action"]): c["classification"] for c in plan["changes"]}
    assert {(c["feature"], c["action"]): c["classification"] for c in reordered["changes"]} == by_feature


@FAST
@given(submissions, st.randoms(use_true_random=False))
def test_plan_hash_ignores_the_order_of_specs(payload, random):
    specs = _valid(payload)
    plan = plans.compute_plan(environment="dev", base_revision=0, dataset_exists=False, specs=specs, state={})
    shuffled = random.sample(specs, len(specs))
    again = plans.compute_plan(environment="dev", base_revision=0, dataset_exists=False, specs=shuffled, state={})
    assert plans.plan_hash(again) == plans.plan_hash(plan)


def _catalog(environment: Environment, component: str) -> dict[str, dict[str, Any]]:
    """The active features of a component in the catalog, as the spec fields."""
    rows = Feature.objects.filter(environment=environment, component__key=component, status=Feature.Status.ACTIVE)
    return {
        f.name: {
            "name": f.name,
            "dtype": f.dtype,
            "description": f.description,
            "ttl": rules.ttl_format(f.ttl_seconds),
            "online": f.online,
            "source": f.source,
            "tags": list(f.tags),
            "owner": f.owner.slug,
        }
        for f in rows.select_related("owner")
    }


def _expected(spec: ComponentSpec) -> dict[str, dict[str, Any]]:
    return {f["name"]: {**f, "owner": spec.owner} for f in spec.as_dict()["features"]}


def _apply(environment: Environment, payload: dict[str, Any]) -> dict[str, Any]:
    result = change_request_plan(environment=environment, payload=payload)
    plan_apply(environment=environment, plan=result.plan, plan_hash=result.plan_hash, change_request=None, actor=None)
    environment.refresh_from_db()
    return result.plan


@pytest.mark.django_db
@ON_DB
@given(transition=transitions(max_features=4))
def test_applying_the_plan_from_a_to_b_gives_b(reference, transition):
    a, b = transition
    # Each example in a savepoint rolled back at its end: every example starts from the empty catalog.
    with transaction.atomic():
        dev = Environment.objects.select_for_update().get(name="dev")
        _apply(dev, {"specs": [a]})
        (spec_a,) = _valid({"specs": [a]})
        assert _catalog(dev, a["component"]) == _expected(spec_a)
        # (b) on the database: the state A produced plans nothing for A.
        assert change_request_plan(environment=dev, payload={"specs": [a]}).plan["is_empty"]

        plan = _apply(dev, {"specs": [b]})
        (spec_b,) = _valid({"specs": [b]})
        assert _catalog(dev, b["component"]) == _expected(spec_b), plans.plan_text(plan)
        removed = {f["name"] for f in a["features"]} - set(_expected(spec_b))
        renamed = {c["renamed_from"] for c in plan["changes"] if c["action"] == "rename"}
        deprecated = set(
            Feature.objects.filter(environment=dev, status=Feature.Status.DEPRECATED).values_list("name", flat=True)
        )
        assert deprecated == removed - renamed
        assert change_request_plan(environment=dev, payload={"specs": [b]}).plan["is_empty"]
        transaction.set_rollback(True)


@pytest.mark.django_db
def test_a_spec_after_its_breaking_dtype_change_plans_nothing(reference):
    """Found by the property above: the version 1 column of a feature whose dtype changed (breaking) is named like
    the feature, and counted as taken by another feature, so the applied spec itself was rejected
    (duplicate_name) on its next submission, and so was every later change to its component."""
    a = mini_spec()
    b = copy.deepcopy(a)
    b["features"][1]["dtype"] = "string"
    with transaction.atomic():
        dev = Environment.objects.select_for_update().get(name="dev")
        _apply(dev, {"specs": [a]})
        plan = _apply(dev, {"specs": [b]})
        assert [(c["feature"], c["column"]) for c in plan["changes"]] == [("c1_beta", "c1_beta__v2")]
        assert change_request_plan(environment=dev, payload={"specs": [b]}).plan["is_empty"]
        # The old column's name stays taken for any other feature.
        other = mini_spec("c2", OWNERS["c2"], names=("alpha",))
        other["features"][0]["name"] = "c1_beta"
        with pytest.raises(SpecValidationError) as rejected:
            change_request_plan(environment=dev, payload={"specs": [other]})
        assert [(p.path, p.rule) for p in rejected.value.problems] == [("specs[0].features[0].name", "duplicate_name")]


# --- Hostile names and text never reach DDL unescaped -----------------------------------------------------------

HOSTILE_PARTS = [
    "'; DROP TABLE c1_features; --",
    "`",
    '"',
    "'",
    "\\",
    "--",
    "/*",
    ";",
    " ",
    "\n",
    "\x00",
    "\u0430",  # Cyrillic a
    "\uff41",  # full-width a
    "\u200b",  # zero-width space
    "e\u0301",  # combining accent
    "select",
    "_partition",
    "__v2",
    "entity_id",
    "x" * 200,
]
hostile_names = st.lists(
    st.sampled_from(HOSTILE_PARTS) | st.text(string.ascii_lowercase + "_", min_size=1, max_size=6),
    min_size=1,
    max_size=4,
).map("".join)
hostile_texts = st.lists(st.sampled_from(HOSTILE_PARTS) | texts, max_size=4).map("".join)


def _identifiers(sql: str, dialect: str) -> set[str]:
    return {node.name for node in sqlglot.parse_one(sql, read=dialect).find_all(exp.Identifier)}


def _string_literals(sql: str) -> list[str]:
    return [node.this for node in sqlglot.parse_one(sql, read="bigquery").find_all(exp.Literal) if node.is_string]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(name=hostile_names, description=hostile_texts, dtype=st.sampled_from(sorted(rules.DTYPES)))
def test_hostile_names_are_rejected_or_reach_ddl_only_as_that_identifier(name, description, dtype):
    feature = {"name": name, "dtype": dtype, "ttl": "48h", "source": "c1.hostile", "description": description}
    payload = {
        "specs": [{"component": "c1", "entity_type": COMPONENTS["c1"], "owner": OWNERS["c1"], "features": [feature]}]
    }
    specs, problems = validate_submission(payload, CONTEXT)
    if problems:
        assert all(p.path and p.rule for p in problems)
        assert {p.path for p in problems} <= {"specs[0].features[0].name", "specs[0].features[0].description"}
        return
    (valid,) = specs[0].features
    assert valid.name == name  # accepted names are used as they are, never altered
    bigquery = rules.DTYPES[dtype].bigquery
    table = TableSpec(
        "c1_features",
        (*(Column(k, t, d, required=True) for k, t, d in KEY_COLUMNS), Column(name, bigquery, valid.description)),
    )
    project, dataset = "my-project", "market_regime_dev"
    statements = {
        "create": (create_table_sql(project, dataset, table), {"c1_features", *KEY_NAMES, name}),
        "add": (add_columns_sql(project, dataset, "c1_features", [Column(name, bigquery)]), {"c1_features", name}),
        "view": (
            training_view_sql(project, dataset, [("c1_features", [(name, name)])]),
            {"training_dataset", "c1_features", "c1", "k", *KEY_NAMES, name},
        ),
        "online": (
            online_source_view_sql(project, dataset, "c1", [(name, name)], 86400),
            {"c1_features", "c1_features_online", "entity_id", "feature_timestamp", *KEY_NAMES, name},
        ),
    }
    for kind, (sql, expected) in statements.items():
        found = _identifiers(sql, "bigquery") - {project, dataset}
        assert found == expected, (kind, sql)
        for duck in to_duckdb(sql):
            assert _identifiers(duck, "duckdb") - {dataset} <= expected | {"k"}, (kind, duck)
            assert name in _identifiers(duck, "duckdb"), (kind, duck)
    # The description is one string literal holding exactly the text, whatever quotes or comments it holds.
    if valid.description:
        assert _string_literals(statements["create"][0]).count(valid.description) == 1


HTML_PARTS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</script><script>",
    "'",
    "&amp;",
    "{{ x }}",
]


@pytest.mark.django_db
@ON_DB
@given(description=st.lists(st.sampled_from(HTML_PARTS) | texts, min_size=1, max_size=4).map("".join))
def test_hostile_descriptions_reach_console_pages_only_escaped(reference, users, description):
    spec = mini_spec()
    spec["features"][1]["description"] = description
    client = Client()
    client.force_login(users["erin"])
    with transaction.atomic():
        dev = Environment.objects.select_for_update().get(name="dev")
        _apply(dev, {"specs": [spec]})
        stored = Feature.objects.get(environment=dev, name="c1_beta").description
        page = client.get("/features/dev/c1_beta/")
        # The search box echoes its text back into the page (an attribute value).
        search = client.get("/features/", {"q": stored})
        transaction.set_rollback(True)
    assert page.status_code == 200
    body = page.content.decode()
    assert escape(stored) in body
    assert search.status_code == 200
    assert f'value="{escape(stored)}"' in search.content.decode()
    # No markup of the description survives as markup (the pages themselves have none of these).
    for page_body in (body, search.content.decode()):
        assert "<script>alert" not in page_body
        assert "<img src=x" not in page_body
        assert "</script><script>" not in page_body


@pytest.mark.parametrize("length", [rules.NAME_MAX_LENGTH, rules.NAME_MAX_LENGTH + 1, 100_000])
def test_long_names_are_accepted_up_to_the_limit_and_rejected_beyond_it(length):
    name = "a" * length
    feature = {"name": name, "dtype": "float64", "ttl": "48h", "source": "c1.long"}
    payload = {
        "specs": [{"component": "c1", "entity_type": COMPONENTS["c1"], "owner": OWNERS["c1"], "features": [feature]}]
    }
    _, problems = validate_submission(payload, CONTEXT)
    if length <= rules.NAME_MAX_LENGTH:
        assert problems == []
        sql = create_table_sql("my-project", "d", TableSpec("c1_features", (Column(name, "FLOAT64"),)))
        assert name in _identifiers(sql, "bigquery")
    else:
        assert [(p.path, p.rule) for p in problems] == [("specs[0].features[0].name", "max_length")]
