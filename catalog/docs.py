"""docs/feature-store-spec.md, generated from the spec files so it can never drift from them."""

from collections import Counter
from pathlib import Path

from catalog import reference, rules
from catalog.specs import load_spec_files

HEADER = """# Feature Store specification

<!-- Generated from catalog/specs/*.yaml by `python manage.py generate_spec_doc`; a test fails when it is stale. -->

This is the catalog of the market-regime feature store: the entity type, every feature with its type, TTL,
owner and online flag, and the mapping from the Epic 1 schema-registry name to the feature-store name.

"""


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_spec_doc(specs_dir: Path) -> str:
    documents = load_spec_files(specs_dir)
    total = sum(len(d["features"]) for d in documents)
    online = [(d["component"], f) for d in documents for f in d["features"] if f.get("online")]
    lines = [HEADER]
    entity = reference.ENTITY_TYPE
    lines.append("## Entity type\n")
    lines.append(f"`{entity['name']}`: {entity['description']}\n")
    lines.append("| key column | BigQuery type |\n|---|---|")
    lines.extend(f"| `{c['name']}` | {c['dtype']} |" for c in entity["key_columns"])
    lines.append(f"\nOnline entity id: `{entity['id_template']}` (for example `NIFTY_202608101415_3`).\n")
    lines.append("## Totals\n")
    lines.append(
        f"{total} features in {len(documents)} components, {len(online)} of them served online. Story 2.1 also "
        'says "824 total" in one place (subtask 1.3); the component counts below add up to '
        f"{total}, and they stand.\n"
    )
    lines.append("| component | title | owner | features | online | minute-level (48h) | daily (30d) | table |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for d in documents:
        ttls = Counter(f["ttl"] for f in d["features"])
        lines.append(
            f"| {d['component']} | {_md(d.get('title', ''))} | {d['owner']} | {len(d['features'])} | "
            f"{sum(1 for f in d['features'] if f.get('online'))} | {ttls.get('48h', 0)} | {ttls.get('30d', 0)} | "
            f"`{d['component']}_features` |"
        )
    lines.append("\n## TTLs\n")
    lines.append(
        "Minute-level features live 48 h in the online store (`48h`); daily aggregates 30 days (`30d`). "
        "The offline tables keep all history, partitioned by `DATE(ts_minute)` and clustered by `symbol, dte`.\n"
    )
    lines.append("## Online features\n")
    lines.append("| component | feature | type | TTL |\n|---|---|---|---|")
    lines.extend(f"| {c} | `{f['name']}` | {f['dtype']} | {f['ttl']} |" for c, f in online)
    for d in documents:
        lines.append(f"\n## {d['component']} — {_md(d.get('title', ''))}\n")
        lines.append(f"Owner: `{d['owner']}`. Table: `market_regime_{{env}}.{d['component']}_features`.\n")
        lines.append("| feature | schema-registry name | type | BigQuery | TTL | online | tags | description |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for f in d["features"]:
            bigquery = rules.DTYPES[f["dtype"]].bigquery
            online_mark = "yes" if f.get("online") else ""
            tags = ", ".join(f.get("tags", []))
            lines.append(
                f"| `{f['name']}` | `{f['source']}` | {f['dtype']} | {bigquery} | {f['ttl']} | {online_mark} | {tags} "
                "| "
                f"{_md(f.get('description', ''))} |"
            )
    return "\n".join(lines) + "\n"
