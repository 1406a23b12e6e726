"""docs/feature-store-spec.md is generated from the spec files and must never be stale."""

import re
import shutil
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.management import call_command

from catalog.docs import render_spec_doc
from catalog.specs import load_spec_files

DOC = Path(settings.BASE_DIR) / "docs" / "feature-store-spec.md"
STALE = "docs/feature-store-spec.md is stale: run `python manage.py generate_spec_doc` and commit the result"


def test_the_spec_doc_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == render_spec_doc(Path(settings.FCC_SPECS_DIR)), STALE


def test_the_doc_states_932_and_the_824_discrepancy():
    text = DOC.read_text(encoding="utf-8")
    assert "932 features in 8 components, 32 of them served online" in text
    assert '"824 total"' in text
    assert re.search(r"824 total.*932, and they stand", text)


def test_the_doc_has_every_feature_with_its_source_ttl_and_owner(real_specs):
    text = DOC.read_text(encoding="utf-8")
    for spec in real_specs:
        assert f"Owner: `{spec['owner']}`" in text
        for feature in spec["features"]:
            assert f"| `{feature['name']}` | `{feature['source']}` | {feature['dtype']} |" in text, feature["name"]
    assert "`${symbol}_${yyyymmddHHMM}_${dte}`" in text
    for key in ("symbol", "ts_minute", "dte"):
        assert f"| `{key}` |" in text


def test_a_changed_spec_makes_the_doc_stale(tmp_path):
    """The check above can fail: a spec edit changes the rendered doc."""
    specs_dir = tmp_path / "specs"
    shutil.copytree(settings.FCC_SPECS_DIR, specs_dir)
    c8 = specs_dir / "c8.yaml"
    document = yaml.safe_load(c8.read_text(encoding="utf-8"))
    document["features"][0]["description"] = "An edited description."
    c8.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    assert len(load_spec_files(specs_dir)) == 8
    assert render_spec_doc(specs_dir) != DOC.read_text(encoding="utf-8")
    assert "An edited description." in render_spec_doc(specs_dir)


def test_generate_spec_doc_writes_the_rendered_doc(tmp_path):
    output = tmp_path / "spec.md"
    call_command("generate_spec_doc", output=output)
    assert output.read_text(encoding="utf-8") == render_spec_doc(Path(settings.FCC_SPECS_DIR))


@pytest.mark.parametrize("component", ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"])
def test_the_doc_has_a_section_per_component(component):
    assert re.search(rf"^## {component} — ", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
