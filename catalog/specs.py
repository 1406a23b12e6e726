"""Spec files: the desired state of one component, the same document as YAML on disk and JSON over the API.

Validation collects every problem of a submission, located by path, before anything is written.
"""

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError

from catalog import rules
from catalog.errors import Problem

# LibYAML's safe loader parses the 932-feature catalog ten times faster than the pure-Python one.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_SPECS_PER_SUBMISSION = 64
MAX_FEATURES_PER_SPEC = rules.BIGQUERY_MAX_COLUMNS

FEATURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "dtype", "ttl", "source"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": rules.NAME_MAX_LENGTH},
        "dtype": {"type": "string", "enum": sorted(rules.DTYPES)},
        "description": {"type": "string", "maxLength": 1024},
        "ttl": {"type": "string", "maxLength": 16},
        "online": {"type": "boolean"},
        "source": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^[A-Za-z][A-Za-z0-9_.:/-]*\Z"},
        "tags": {
            "type": "array",
            "maxItems": 16,
            "items": {"type": "string", "pattern": r"^[a-z][a-z0-9_-]*\Z", "maxLength": 64},
        },
    },
}

SPEC_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Component spec",
    "type": "object",
    "additionalProperties": False,
    "required": ["component", "entity_type", "owner", "features"],
    "properties": {
        "component": {"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,15}\Z"},
        "title": {"type": "string", "maxLength": 200},
        "entity_type": {"type": "string", "maxLength": 64},
        "owner": {"type": "string", "maxLength": 63},
        "features": {"type": "array", "maxItems": MAX_FEATURES_PER_SPEC, "items": FEATURE_SCHEMA},
    },
}

SUBMISSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["specs"],
    "properties": {
        "specs": {"type": "array", "minItems": 1, "maxItems": MAX_SPECS_PER_SUBMISSION, "items": SPEC_SCHEMA}
    },
}

_validator = Draft202012Validator(SUBMISSION_SCHEMA)
# The same schema compiled to Python code answers "valid?" about 17 times faster; jsonschema then locates the
# problems only when there are some. (fastjsonschema speaks draft 7; this schema uses no later keyword.)
_fast_check = fastjsonschema.compile({k: v for k, v in SUBMISSION_SCHEMA.items() if k != "$schema"})

_RULE_NAMES = {
    "maxLength": "max_length",
    "minLength": "min_length",
    "maxItems": "max_items",
    "minItems": "min_items",
    "additionalProperties": "unknown_field",
}


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    dtype: str
    description: str
    ttl_seconds: int
    online: bool
    source: str
    tags: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "description": self.description,
            "ttl": rules.ttl_format(self.ttl_seconds),
            "online": self.online,
            "source": self.source,
            "tags": list(self.tags),
        }


@dataclass(frozen=True)
class ComponentSpec:
    component: str
    entity_type: str
    owner: str
    features: tuple[FeatureSpec, ...]
    title: str = ""

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "component": self.component,
            "entity_type": self.entity_type,
            "owner": self.owner,
            "features": [f.as_dict() for f in self.features],
        }
        if self.title:
            data["title"] = self.title
        return data


@dataclass
class CatalogContext:
    """What validation needs to know of the database: reference data and the rest of the environment."""

    teams: frozenset[str]
    entity_types: frozenset[str]
    # component key -> its entity type name
    components: Mapping[str, str]
    # Names and source names held by features of components that the submission does not replace, and the
    # column names of earlier versions anywhere (their columns stay in the tables).
    other_names: Mapping[str, str] = field(default_factory=dict)
    other_sources: Mapping[str, str] = field(default_factory=dict)
    # component key -> columns its table keeps (deprecated features and earlier versions) beyond the spec's
    retained_columns: Mapping[str, int] = field(default_factory=dict)
    key_columns: frozenset[str] = frozenset({"symbol", "ts_minute", "dte"})
    other_component_columns: int = 0


def _schema_path(error: SchemaError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _schema_problems(payload: Any) -> list[Problem]:
    try:
        _fast_check(payload)
    except fastjsonschema.JsonSchemaException:
        pass
    else:
        return []
    problems = []
    for error in sorted(_validator.iter_errors(payload), key=lambda e: [str(p) for p in e.absolute_path]):
        path = _schema_path(error)
        rule = _RULE_NAMES.get(str(error.validator), str(error.validator))
        if error.validator == "required":
            missing = re.match(r"'([^']*)' is a required property", error.message)
            field_name = missing.group(1) if missing else "?"
            problems.append(Problem(_join(path, field_name), "required", f"{field_name} is required"))
            continue
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            for key in error.instance:
                if key not in allowed:
                    problems.append(
                        Problem(_join(path, str(key)), rule, f"{key!r} is not a field here; allowed: {sorted(allowed)}")
                    )
            continue
        field_name = path.rsplit(".", 1)[-1] if path else "submission"
        detail = f"{field_name}: {error.message}"
        if error.validator == "enum":
            detail = f"{field_name} must be one of {', '.join(map(str, error.validator_value))}; got {error.instance!r}"
        elif error.validator == "pattern":
            detail = f"{field_name} {error.instance!r} must match {error.validator_value}"
        elif error.validator in ("maxLength", "maxItems"):
            detail = f"{field_name} is longer than the limit of {error.validator_value}"
        problems.append(Problem(path or "submission", rule, detail[:500]))
    return problems


def _name_problems(path: str, name: str, key_columns: Iterable[str]) -> list[Problem]:
    problems = []
    if len(name) > rules.NAME_MAX_LENGTH:
        return []  # reported by the schema
    # BigQuery's reserved prefixes all start with `_`, which the pattern refuses too: say which rule it is.
    if name.lower().startswith(rules.BIGQUERY_RESERVED_PREFIXES):
        problems.append(Problem(path, "reserved_prefix", f"name {name!r} starts with a prefix BigQuery reserves"))
    # fullmatch: `$` would also accept a trailing newline.
    if not rules.NAME_PATTERN.fullmatch(name):
        problems.append(
            Problem(path, "pattern", f"name {name!r} must be snake_case: ^[a-z][a-z0-9_]*$ (lowercase, digits, _)")
        )
        return problems
    if name in rules.BIGQUERY_RESERVED_WORDS:
        problems.append(Problem(path, "reserved_word", f"name {name!r} is a BigQuery reserved word"))
    if name in key_columns or name in rules.RESERVED_COLUMN_NAMES:
        problems.append(Problem(path, "key_column_clash", f"name {name!r} is a key or reserved column of the table"))
    if rules.VERSION_SUFFIX.search(name):
        problems.append(Problem(path, "version_suffix", f"name {name!r} ends like a version column (__v<N>)"))
    return problems


# NUL cannot be stored by PostgreSQL (text or jsonb); an unpaired surrogate cannot be encoded as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _character_problems(payload: Any) -> list[Problem]:
    """Every string (or field name) in the payload holding a character no store can keep. Iterative: the
    payload may be nested deeply."""
    detail = "holds a NUL character or an unpaired surrogate, which cannot be stored"
    # One search of the whole text first: the walk below only runs for a payload that has such a character.
    try:
        text = json.dumps(payload, ensure_ascii=False)  # NUL comes out escaped, surrogates as they are
        if "\\u0000" not in text and not _UNSTORABLE.search(text):
            return []
    except (TypeError, ValueError):
        pass
    problems = []
    stack: list[tuple[str, Any]] = [("", payload)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if _UNSTORABLE.search(str(key)):
                    problems.append(Problem(_join(path, ascii(str(key))), "invalid_characters", f"field name {detail}"))
                else:
                    stack.append((_join(path, str(key)), item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str) and _UNSTORABLE.search(value):
            problems.append(Problem(path or "submission", "invalid_characters", f"{path or 'submission'} {detail}"))
    return sorted(problems, key=lambda p: p.path)


def validate_submission(payload: Any, context: CatalogContext) -> tuple[list[ComponentSpec], list[Problem]]:
    """Returns the normalised specs, or every problem found. Never partially valid: problems mean no specs."""
    # Reported alone: other problems' paths and details would repeat the unstorable text.
    problems = _character_problems(payload)
    if problems:
        return [], problems
    problems = _schema_problems(payload)
    if not isinstance(payload, dict) or not isinstance(payload.get("specs"), list):
        return [], problems

    raw_specs: list[Any] = payload["specs"]
    component_counts = Counter(
        s["component"] for s in raw_specs if isinstance(s, dict) and isinstance(s.get("component"), str)
    )
    names_seen: dict[str, str] = {}
    sources_seen: dict[str, str] = {}
    total_columns = context.other_component_columns
    specs: list[ComponentSpec] = []

    for i, raw in enumerate(raw_specs):
        base = f"specs[{i}]"
        if not isinstance(raw, dict):
            continue
        component = raw.get("component")
        if isinstance(component, str):
            if component not in context.components:
                known = ", ".join(sorted(context.components))
                problems.append(
                    Problem(
                        f"{base}.component",
                        "unknown_component",
                        f"component {component!r} does not exist; known: {known}",
                    )
                )
            elif component_counts[component] > 1:
                problems.append(
                    Problem(
                        f"{base}.component", "duplicate_component", f"component {component!r} appears more than once"
                    )
                )
        entity_type = raw.get("entity_type")
        if isinstance(entity_type, str):
            if entity_type not in context.entity_types:
                problems.append(
                    Problem(f"{base}.entity_type", "unknown_entity_type", f"entity type {entity_type!r} does not exist")
                )
            elif isinstance(component, str) and context.components.get(component, entity_type) != entity_type:
                problems.append(
                    Problem(
                        f"{base}.entity_type",
                        "entity_type_immutable",
                        f"component {component!r} is keyed by {context.components[component]!r}; changing a "
                        "component's key is not applied in place: register a new component instead",
                    )
                )
        owner = raw.get("owner")
        if isinstance(owner, str) and owner not in context.teams:
            problems.append(Problem(f"{base}.owner", "unknown_team", f"owner team {owner!r} does not exist"))

        features_raw = raw.get("features")
        if not isinstance(features_raw, list):
            continue
        features: list[FeatureSpec] = []
        for j, feature in enumerate(features_raw):
            fpath = f"{base}.features[{j}]"
            if not isinstance(feature, dict):
                continue
            name = feature.get("name")
            if isinstance(name, str):
                problems.extend(_name_problems(f"{fpath}.name", name, context.key_columns))
                if name in names_seen:
                    problems.append(
                        Problem(f"{fpath}.name", "duplicate_name", f"name {name!r} is also used at {names_seen[name]}")
                    )
                elif name in context.other_names:
                    problems.append(
                        Problem(
                            f"{fpath}.name",
                            "duplicate_name",
                            f"name {name!r} is already used by {context.other_names[name]}; names are unique across "
                            "the catalog (the training dataset joins every component)",
                        )
                    )
                else:
                    names_seen[name] = f"{fpath}.name"
            source = feature.get("source")
            if isinstance(source, str):
                if source in sources_seen:
                    problems.append(
                        Problem(
                            f"{fpath}.source",
                            "duplicate_source",
                            f"source {source!r} is also mapped at {sources_seen[source]}",
                        )
                    )
                elif source in context.other_sources:
                    problems.append(
                        Problem(
                            f"{fpath}.source",
                            "duplicate_source",
                            f"source {source!r} is already mapped to {context.other_sources[source]}",
                        )
                    )
                else:
                    sources_seen[source] = f"{fpath}.source"
            ttl = feature.get("ttl")
            ttl_seconds: int | None = None
            if isinstance(ttl, str):
                ttl_seconds = rules.ttl_parse(ttl)
                if ttl_seconds is None:
                    problems.append(
                        Problem(
                            f"{fpath}.ttl",
                            "ttl_format",
                            f"ttl {ttl!r} must be a number and a unit m, h or d, like 48h or 30d",
                        )
                    )
                elif not rules.TTL_MIN_SECONDS <= ttl_seconds <= rules.TTL_MAX_SECONDS:
                    problems.append(Problem(f"{fpath}.ttl", "ttl_range", f"ttl {ttl!r} must be between 1m and 365d"))
            if isinstance(name, str) and isinstance(ttl_seconds, int) and isinstance(source, str):
                tags = feature.get("tags") or []
                features.append(
                    FeatureSpec(
                        name=name,
                        dtype=str(feature.get("dtype")),
                        description=str(feature.get("description", "")).strip(),
                        ttl_seconds=ttl_seconds,
                        online=bool(feature.get("online", False)),
                        source=source,
                        tags=tuple(dict.fromkeys(str(t) for t in tags)) if isinstance(tags, list) else (),
                    )
                )
        columns = len(features_raw) + len(context.key_columns) + context.retained_columns.get(str(component), 0)
        total_columns += len(features_raw) + context.retained_columns.get(str(component), 0)
        if columns > rules.BIGQUERY_MAX_COLUMNS:
            problems.append(
                Problem(
                    f"{base}.features",
                    "column_limit",
                    f"the table would have {columns} columns; BigQuery allows {rules.BIGQUERY_MAX_COLUMNS}",
                )
            )
        if isinstance(component, str) and isinstance(entity_type, str) and isinstance(owner, str):
            specs.append(
                ComponentSpec(
                    component=component,
                    entity_type=entity_type,
                    owner=owner,
                    features=tuple(features),
                    title=str(raw.get("title", "")),
                )
            )
    if total_columns + len(context.key_columns) > rules.BIGQUERY_MAX_COLUMNS:
        problems.append(
            Problem(
                "specs",
                "column_limit",
                f"the training_dataset view would have {total_columns + len(context.key_columns)} columns; "
                f"BigQuery allows {rules.BIGQUERY_MAX_COLUMNS}",
            )
        )
    if problems:
        return [], problems
    return specs, []


def load_spec_files(directory: Path) -> list[dict[str, Any]]:
    """The spec documents of a directory, one YAML file per component, in file-name order."""
    documents = []
    for path in sorted(directory.glob("*.yaml")):
        with path.open(encoding="utf-8") as handle:
            # The safe loader, LibYAML's when it is built in.
            documents.append(yaml.load(handle, Loader=SafeLoader))  # noqa: S506
    return documents


def specs_as_dicts(specs: Sequence[ComponentSpec]) -> list[dict[str, Any]]:
    return [spec.as_dict() for spec in specs]
