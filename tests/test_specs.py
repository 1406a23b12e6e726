"""Spec validation: every rule reports `{path, rule, detail}` at the right path, a bad submission writes
nothing, the real spec files are valid and match the story, and no input causes a server error."""

import json
import re
from collections import Counter
from typing import Any

import pytest

from catalog import rules
from catalog.errors import SpecValidationError
from catalog.models import AuditLogEntry, ChangeRequest, EntityType, Environment, Feature
from catalog.services import change_request_plan
from catalog.specs import MAX_SPECS_PER_SUBMISSION, CatalogContext, validate_submission
from tests.conftest import mini_spec

pytestmark = pytest.mark.django_db

PLAN_URL = "/api/v1/change-requests/plan/"
SUBMIT_URL = "/api/v1/change-requests/"
EXPECTED_COUNTS = {"c1": 150, "c2": 98, "c3": 105, "c4": 87, "c5": 94, "c6": 220, "c7": 130, "c8": 48}


def problems_of(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid_specs"
    assert set(body) >= {"code", "message", "errors"}
    for problem in body["errors"]:
        assert set(problem) == {"path", "rule", "detail"}
        assert problem["detail"]
    return body["errors"]


def located(response: Any) -> set[tuple[str, str]]:
    return {(p["path"], p["rule"]) for p in problems_of(response)}


def plan(client: Any, specs: list[dict[str, Any]], environment: str = "dev") -> Any:
    return client.post(PLAN_URL, {"environment": environment, "specs": specs}, format="json")


def feature(spec: dict[str, Any], index: int) -> dict[str, Any]:
    return spec["features"][index]


def _set(index: int, key: str, value: Any):
    def mutate(spec: dict[str, Any]) -> None:
        spec["features"][index][key] = value

    return mutate


def _copy_from(index: int, other: int, key: str):
    def mutate(spec: dict[str, Any]) -> None:
        spec["features"][index][key] = spec["features"][other][key]

    return mutate


def _delete(index: int | None, key: str):
    def mutate(spec: dict[str, Any]) -> None:
        del (spec if index is None else spec["features"][index])[key]

    return mutate


def _spec_set(key: str, value: Any):
    def mutate(spec: dict[str, Any]) -> None:
        spec[key] = value

    return mutate


F1 = "specs[0].features[1]"
RULE_CASES = [
    pytest.param(_set(1, "name", "BadName"), f"{F1}.name", "pattern", id="name-pattern-uppercase"),
    pytest.param(_set(1, "name", "1st_value"), f"{F1}.name", "pattern", id="name-pattern-digit-first"),
    pytest.param(_set(1, "name", "has-dash"), f"{F1}.name", "pattern", id="name-pattern-dash"),
    pytest.param(_set(1, "name", "alpha\n"), f"{F1}.name", "pattern", id="name-pattern-trailing-newline"),
    pytest.param(_set(1, "name", "a" * 129), f"{F1}.name", "max_length", id="name-too-long"),
    pytest.param(_set(1, "name", "select"), f"{F1}.name", "reserved_word", id="reserved-word-select"),
    pytest.param(_set(1, "name", "qualify"), f"{F1}.name", "reserved_word", id="reserved-word-qualify"),
    pytest.param(_set(1, "name", "_partitiontime"), f"{F1}.name", "reserved_prefix", id="reserved-prefix-partition"),
    pytest.param(_set(1, "name", "_table_suffix"), f"{F1}.name", "reserved_prefix", id="reserved-prefix-table"),
    pytest.param(_set(1, "name", "symbol"), f"{F1}.name", "key_column_clash", id="key-clash-symbol"),
    pytest.param(_set(1, "name", "dte"), f"{F1}.name", "key_column_clash", id="key-clash-dte"),
    pytest.param(_set(1, "name", "ts_minute"), f"{F1}.name", "key_column_clash", id="key-clash-ts-minute"),
    pytest.param(_set(1, "name", "entity_id"), f"{F1}.name", "key_column_clash", id="key-clash-entity-id"),
    pytest.param(_set(1, "name", "foo__v2"), f"{F1}.name", "version_suffix", id="version-suffix"),
    pytest.param(_copy_from(2, 0, "name"), "specs[0].features[2].name", "duplicate_name", id="duplicate-name"),
    pytest.param(_copy_from(2, 0, "source"), "specs[0].features[2].source", "duplicate_source", id="duplicate-source"),
    pytest.param(_set(1, "source", "has space"), f"{F1}.source", "pattern", id="source-pattern"),
    pytest.param(_set(1, "source", "component_01.alpha\n"), f"{F1}.source", "pattern", id="source-trailing-newline"),
    pytest.param(_set(1, "dtype", "float128"), f"{F1}.dtype", "enum", id="unknown-dtype"),
    pytest.param(_set(1, "dtype", "FLOAT64"), f"{F1}.dtype", "enum", id="dtype-is-case-sensitive"),
    pytest.param(_set(1, "ttl", "2 days"), f"{F1}.ttl", "ttl_format", id="ttl-format-words"),
    pytest.param(_set(1, "ttl", "48"), f"{F1}.ttl", "ttl_format", id="ttl-format-no-unit"),
    pytest.param(_set(1, "ttl", "0h"), f"{F1}.ttl", "ttl_format", id="ttl-format-zero"),
    pytest.param(_set(1, "ttl", "48s"), f"{F1}.ttl", "ttl_format", id="ttl-format-seconds"),
    pytest.param(_set(1, "ttl", "366d"), f"{F1}.ttl", "ttl_range", id="ttl-range-too-long"),
    pytest.param(_set(1, "ttl", 48), f"{F1}.ttl", "type", id="ttl-not-a-string"),
    pytest.param(_set(1, "online", "yes"), f"{F1}.online", "type", id="online-not-boolean"),
    pytest.param(_set(1, "tags", ["Minute"]), f"{F1}.tags[0]", "pattern", id="tag-pattern"),
    pytest.param(_set(1, "tags", [f"t{i}" for i in range(17)]), f"{F1}.tags", "max_items", id="too-many-tags"),
    pytest.param(_set(1, "description", "d" * 1025), f"{F1}.description", "max_length", id="description-too-long"),
    pytest.param(_set(1, "colour", "red"), f"{F1}.colour", "unknown_field", id="unknown-feature-field"),
    pytest.param(_spec_set("colour", "red"), "specs[0].colour", "unknown_field", id="unknown-spec-field"),
    pytest.param(_delete(1, "dtype"), f"{F1}.dtype", "required", id="missing-dtype"),
    pytest.param(_delete(1, "name"), f"{F1}.name", "required", id="missing-name"),
    pytest.param(_delete(None, "owner"), "specs[0].owner", "required", id="missing-owner"),
    pytest.param(_delete(None, "features"), "specs[0].features", "required", id="missing-features"),
    pytest.param(_spec_set("owner", "team-nobody"), "specs[0].owner", "unknown_team", id="unknown-owner-team"),
    pytest.param(
        _spec_set("entity_type", "instrument_hour"),
        "specs[0].entity_type",
        "unknown_entity_type",
        id="unknown-entity-type",
    ),
    pytest.param(_spec_set("component", "c9"), "specs[0].component", "unknown_component", id="unknown-component"),
    pytest.param(_spec_set("component", "C1"), "specs[0].component", "pattern", id="component-pattern"),
]


@pytest.mark.parametrize(("mutate", "path", "rule"), RULE_CASES)
def test_each_rule_is_reported_at_its_path(reference, client_for, mutate, path, rule):
    spec = mini_spec()
    mutate(spec)
    response = plan(client_for("dave"), [spec])
    assert (path, rule) in located(response)


def test_unmodified_mini_spec_is_valid(reference, client_for):
    """The baseline every rule case mutates: without the mutation there is no problem at all."""
    response = plan(client_for("dave"), [mini_spec()])
    assert response.status_code == 200, response.content


def test_name_clash_with_a_feature_of_another_applied_component(loaded, client_for, specs):
    c2 = next(s for s in specs if s["component"] == "c2")
    taken = c2["features"][4]["name"]
    spec = mini_spec()
    spec["features"][1]["name"] = taken
    problems = problems_of(plan(client_for("dave"), [spec]))
    clash = [p for p in problems if p["path"] == "specs[0].features[1].name"]
    assert [p["rule"] for p in clash] == ["duplicate_name"]
    assert f"c2.{taken}" in clash[0]["detail"]


def test_source_clash_with_a_feature_of_another_applied_component(loaded, client_for, specs):
    c3 = next(s for s in specs if s["component"] == "c3")
    spec = mini_spec()
    spec["features"][0]["source"] = c3["features"][0]["source"]
    assert ("specs[0].features[0].source", "duplicate_source") in located(plan(client_for("dave"), [spec]))


def test_replacing_a_component_may_reuse_its_own_names(loaded, client_for, specs):
    """Names are unique across the catalog, but a spec replaces its component: its own names are not clashes."""
    response = plan(client_for("dave"), [specs[0]])
    assert response.status_code == 200, response.content
    assert response.json()["plan"]["is_empty"] is True


def test_duplicate_name_across_two_specs_of_one_submission(reference, client_for):
    c1 = mini_spec("c1")
    c2 = mini_spec("c2", owner="team-greeks")
    c2["features"][2]["name"] = c1["features"][0]["name"]
    assert ("specs[1].features[2].name", "duplicate_name") in located(plan(client_for("dave"), [c1, c2]))


def test_duplicate_component_is_reported_at_each_occurrence(reference, client_for):
    first = mini_spec("c1")
    second = mini_spec("c1", names=("delta", "epsilon"))
    found = located(plan(client_for("dave"), [first, second]))
    assert {("specs[0].component", "duplicate_component"), ("specs[1].component", "duplicate_component")} <= found


def test_changing_a_components_entity_type_is_refused(reference, client_for):
    EntityType.objects.create(
        name="instrument_day", key_columns=[{"name": "symbol", "dtype": "STRING"}], id_template="${symbol}"
    )
    spec = mini_spec()
    spec["entity_type"] = "instrument_day"
    assert ("specs[0].entity_type", "entity_type_immutable") in located(plan(client_for("dave"), [spec]))


def test_too_many_specs(reference, client_for):
    many = [mini_spec("c1", names=(f"n{i}",)) for i in range(MAX_SPECS_PER_SUBMISSION + 1)]
    assert ("specs", "max_items") in located(plan(client_for("dave"), many))


def test_empty_submission(reference, client_for):
    assert ("specs", "min_items") in located(plan(client_for("dave"), []))


def _wide_spec(count: int) -> dict[str, Any]:
    spec = mini_spec()
    template = spec["features"][0]
    spec["features"] = [{**template, "name": f"f{i}", "source": f"wide.f{i}", "online": False} for i in range(count)]
    return spec


def test_column_limit_of_one_table_over_the_api(reference, client_for):
    # 9,998 features and the 3 key columns: 10,001 columns, one more than BigQuery allows.
    response = plan(client_for("dave"), [_wide_spec(rules.BIGQUERY_MAX_COLUMNS - 2)])
    problems = problems_of(response)
    # Too wide as a table and, as it is the only component, as the training_dataset view too.
    assert {(p["path"], p["rule"]) for p in problems} == {
        ("specs[0].features", "column_limit"),
        ("specs", "column_limit"),
    }
    assert all("10001" in p["detail"] for p in problems)


def _context(**kwargs: Any) -> CatalogContext:
    return CatalogContext(
        teams=frozenset({"team-straddle", "team-greeks"}),
        entity_types=frozenset({"instrument_minute"}),
        components={"c1": "instrument_minute", "c2": "instrument_minute"},
        **kwargs,
    )


def test_column_limit_counts_columns_the_table_keeps():
    """Deprecated features and earlier versions keep their columns: they count against the table's limit."""
    limit = rules.BIGQUERY_MAX_COLUMNS
    at_limit = _context(retained_columns={"c1": limit - 3 - 3})
    assert validate_submission({"specs": [mini_spec()]}, at_limit)[1] == []
    over = _context(retained_columns={"c1": limit - 3 - 2})
    specs, problems = validate_submission({"specs": [mini_spec()]}, over)
    assert specs == []
    assert ("specs[0].features", "column_limit") in {(p.path, p.rule) for p in problems}


def test_column_limit_of_the_training_dataset_view():
    """The view joins every component: the columns of the other components count too."""
    context = _context(other_component_columns=rules.BIGQUERY_MAX_COLUMNS - 3 - 2)
    _, problems = validate_submission({"specs": [mini_spec()]}, context)
    assert [(p.path, p.rule) for p in problems] == [("specs", "column_limit")]


def test_several_problems_are_all_listed_and_nothing_is_written(reference, client_for):
    spec = mini_spec(names=("alpha", "beta", "gamma", "delta"))
    spec["owner"] = "team-nobody"
    spec["features"][0]["name"] = "Select"
    spec["features"][1]["ttl"] = "forever"
    spec["features"][2]["dtype"] = "decimal"
    spec["features"][3]["source"] = spec["features"][1]["source"]
    spec["features"][3]["extra"] = 1
    before = AuditLogEntry.objects.count()
    response = client_for("dave").post(
        SUBMIT_URL, {"environment": "dev", "title": "bad", "specs": [spec]}, format="json"
    )
    found = located(response)
    assert found == {
        ("specs[0].owner", "unknown_team"),
        ("specs[0].features[0].name", "pattern"),
        ("specs[0].features[1].ttl", "ttl_format"),
        ("specs[0].features[2].dtype", "enum"),
        ("specs[0].features[3].source", "duplicate_source"),
        ("specs[0].features[3].extra", "unknown_field"),
    }
    assert response.json()["message"].startswith("6 problem(s)")
    assert ChangeRequest.objects.count() == 0
    assert not AuditLogEntry.objects.filter(action="change_request.submit").exists()
    assert AuditLogEntry.objects.count() == before
    assert Environment.objects.get(name="dev").revision == 0


def test_service_raises_with_every_problem(reference):
    spec = mini_spec()
    spec["features"][0]["name"] = "dte"
    spec["features"][1]["name"] = "select"
    with pytest.raises(SpecValidationError) as raised:
        change_request_plan(environment=Environment.objects.get(name="dev"), payload={"specs": [spec]})
    assert {(p.path, p.rule) for p in raised.value.problems} == {
        ("specs[0].features[0].name", "key_column_clash"),
        ("specs[0].features[1].name", "reserved_word"),
    }
    assert raised.value.status == 400


# --- The real catalog -------------------------------------------------------------------------------------------


def test_real_spec_files_have_no_problems(reference, real_specs):
    result = change_request_plan(environment=Environment.objects.get(name="dev"), payload={"specs": real_specs})
    assert result.plan["summary"]["create"] == 932


def test_real_spec_files_have_no_problems_against_the_loaded_catalog(loaded, client_for, real_specs):
    response = plan(client_for("erin"), real_specs)
    assert response.status_code == 200, response.content[:2000]
    assert response.json()["plan"]["is_empty"] is True


def test_real_catalog_counts(real_specs):
    counts = {s["component"]: len(s["features"]) for s in real_specs}
    assert counts == EXPECTED_COUNTS
    assert sum(counts.values()) == 932


def test_real_catalog_has_32_online_features(real_specs):
    assert sum(1 for s in real_specs for f in s["features"] if f.get("online")) == 32


def test_real_catalog_names_ttls_and_sources(real_specs):
    features = [f for s in real_specs for f in s["features"]]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", f["name"]) for f in features)
    assert all(len(f["name"]) <= rules.NAME_MAX_LENGTH for f in features)
    assert {f["ttl"] for f in features} == {"48h", "30d"}
    names = Counter(f["name"] for f in features)
    assert [n for n, c in names.items() if c > 1] == []
    sources = Counter(f["source"] for f in features)
    assert all(f.get("source") for f in features)
    assert [s for s, c in sources.items() if c > 1] == []


def test_real_catalog_owners_are_the_component_teams(reference, real_specs):
    from catalog.models import Component

    owners = {c.key: c.owner.slug for c in Component.objects.select_related("owner")}
    assert {s["component"]: s["owner"] for s in real_specs} == owners


def test_loaded_catalog_matches_the_files(loaded):
    dev = Feature.objects.filter(environment__name="dev", status="active")
    counts = dict(Counter(dev.values_list("component__key", flat=True)))
    assert counts == EXPECTED_COUNTS
    assert dev.filter(online=True).count() == 32


# --- Hostile input ----------------------------------------------------------------------------------------------

HOSTILE = [
    pytest.param("'; DROP TABLE catalog_feature; --", id="sql-drop"),
    pytest.param("x' OR '1'='1", id="sql-or"),
    pytest.param("\"'`\\", id="quotes"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("\x00", id="only-nul"),
    pytest.param("\u0430lpha", id="cyrillic-a"),
    pytest.param("\uff41lpha", id="fullwidth-a"),
    pytest.param("alpha\u200b", id="zero-width-space"),
    pytest.param("e\u0301", id="combining-accent"),
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param("a\nb\r\n", id="newlines"),
    pytest.param("x" * 100_000, id="100k-chars"),
    pytest.param("", id="empty"),
    pytest.param(10**30, id="huge-int"),
    pytest.param(-1.5e308, id="huge-float"),
    pytest.param(None, id="null"),
    pytest.param(True, id="bool"),
    pytest.param([], id="list"),
    pytest.param({"$ne": 1}, id="dict"),
    pytest.param(["c1"], id="list-of-string"),
]
# Where a hostile value goes: a feature field, a spec field, or a field of the request itself.
TARGETS = [
    ("feature", "name"),
    ("feature", "description"),
    ("feature", "source"),
    ("feature", "ttl"),
    ("feature", "dtype"),
    ("feature", "online"),
    ("feature", "tags"),
    ("feature", "tag"),
    ("feature", "key"),
    ("spec", "component"),
    ("spec", "owner"),
    ("spec", "entity_type"),
    ("spec", "title"),
    ("spec", "features"),
    ("request", "environment"),
    ("request", "title"),
    ("request", "specs"),
]


def _hostile_body(target: tuple[str, str], value: Any) -> dict[str, Any]:
    spec = mini_spec()
    body: dict[str, Any] = {"environment": "dev", "title": "hostile", "specs": [spec]}
    where, key = target
    if where == "feature" and key == "tag":
        spec["features"][1]["tags"] = [value]
    elif where == "feature" and key == "key":
        if isinstance(value, str):
            spec["features"][1][value] = "x"
    elif where == "feature":
        spec["features"][1][key] = value
    elif where == "spec":
        spec[key] = value
    else:
        body[key] = value
    return body


def _post_raw(client: Any, url: str, body: dict[str, Any]) -> Any:
    # json.dumps escapes non-ASCII, so a lone surrogate travels as the JSON escape `\ud800`, as a client sends it.
    return client.generic("POST", url, json.dumps(body), content_type="application/json")


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: ".".join(t))
def test_hostile_input_never_causes_a_server_error(reference, client_for, target):
    client = client_for("dave")
    failures = []
    for value in HOSTILE:
        body = _hostile_body(target, value.values[0])
        for url in (PLAN_URL, SUBMIT_URL):
            response = _post_raw(client, url, body)
            if response.status_code not in (200, 201, 400):
                failures.append((value.id, url, response.status_code, response.content[:300]))
            elif response.status_code == 400 and not {"code", "message", "errors"} <= set(response.json()):
                failures.append((value.id, url, "error body", response.content[:300]))
    assert failures == []


@pytest.mark.parametrize(
    "text", ["'; DROP TABLE catalog_feature; --", "\u0430lpha \u2014 \U0001f4c8", 'quote " and \\']
)
def test_hostile_but_storable_description_is_kept_verbatim(reference, client_for, text):
    spec = mini_spec()
    spec["features"][1]["description"] = text
    response = _post_raw(client_for("dave"), SUBMIT_URL, {"environment": "dev", "specs": [spec]})
    assert response.status_code == 201, response.content
    cr = ChangeRequest.objects.get(pk=response.json()["change_request"]["id"])
    assert cr.specs[0]["features"][1]["description"] == text
    create = next(c for c in cr.plan["changes"] if c["feature"] == "c1_beta")
    assert create["definition"]["description"] == text


@pytest.mark.parametrize("text", ["nul\x00inside", "lone \udc00 surrogate"])
def test_unstorable_characters_are_located_problems(reference, client_for, text):
    spec = mini_spec()
    spec["features"][2]["description"] = text
    spec["title"] = text
    response = _post_raw(client_for("dave"), SUBMIT_URL, {"environment": "dev", "specs": [spec]})
    assert located(response) == {
        ("specs[0].features[2].description", "invalid_characters"),
        ("specs[0].title", "invalid_characters"),
    }
    assert ChangeRequest.objects.count() == 0


def test_unstorable_field_name_is_reported_escaped(reference, client_for):
    spec = mini_spec()
    spec["features"][0]["bad\x00key"] = 1
    response = _post_raw(client_for("dave"), PLAN_URL, {"environment": "dev", "specs": [spec]})
    assert located(response) == {("specs[0].features[0].'bad\\x00key'", "invalid_characters")}


@pytest.mark.parametrize("depth", [40, 900, 100_000])
def test_deeply_nested_json_is_a_client_error(reference, client_for, depth):
    body = '{"environment": "dev", "specs": ' + "[" * depth + "]" * depth + "}"
    response = client_for("dave").generic("POST", PLAN_URL, body, content_type="application/json")
    assert response.status_code == 400
    assert set(response.json()) >= {"code", "message", "errors"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("not json", id="not-json"),
        pytest.param('{"environment": "dev", "specs": [', id="truncated"),
        pytest.param("[]", id="array"),
        pytest.param('"specs"', id="string"),
        pytest.param('{"environment": "dev", "specs": "c1"}', id="specs-string"),
        pytest.param('{"environment": "dev", "specs": {"component": "c1"}}', id="specs-object"),
        pytest.param('{"environment": "dev", "specs": [1, "two", null, []]}', id="specs-not-objects"),
        pytest.param(
            '{"environment": "dev", "specs": [{"component": "c1", "features": [1, null, "x"]}]}',
            id="features-not-objects",
        ),
        pytest.param(
            '{"environment": "dev", "specs": [{"component": "c1", "features": {"a": 1}}]}', id="features-object"
        ),
        pytest.param(
            '{"environment": "dev", "specs": [{"component": ["c1"]}, {"component": ["c1"]}]}', id="component-list"
        ),
        pytest.param('{"environment": "dev", "specs": [{"component": {"k": 1}}]}', id="component-object"),
        pytest.param('{"environment": "dev", "specs": null}', id="specs-null"),
        pytest.param('{"environment": "qa", "specs": []}', id="unknown-environment"),
    ],
)
def test_malformed_documents_are_client_errors(reference, client_for, body):
    client = client_for("dave")
    for url in (PLAN_URL, SUBMIT_URL):
        response = client.generic("POST", url, body, content_type="application/json")
        assert response.status_code == 400, (url, response.status_code, response.content[:500])
        assert set(response.json()) >= {"code", "message", "errors"}
