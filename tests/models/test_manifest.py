"""The variant manifest as one type: variants written before it (and by a newer greenlm) still load, and what
is read is what is written back."""

import json

import pytest

from greenlm.errors import GreenlmError
from greenlm.models.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest

# A distilled variant's manifest as greenlm wrote it before the type existed (keys in its order then), plus a
# key this greenlm does not know.
OLD = {
    "variant_id": "0123456789ab",
    "created_at": "2025-05-01T10:00:00+00:00",
    "recipe": {"steps": [{"method": "drop_layers", "count": 1}, {"method": "distill", "steps": 2}]},
    "parent": {"name": "smollm2-135m", "fingerprint": "abc"},
    "execution": "real",
    "steps": [{"method": "drop_layers", "execution": "real", "details": {}}],
    "architecture": {"num_hidden_layers": 29},
    "calibration": {"text": "builtin:pydoc-topics/calibration"},
    "quality": None,
    "training": {"energy_j": 380.0, "method": "distill"},
    "notes": ["healed"],
    "format": "greenlm-variant/1",
    "weights": {"file": "model.safetensors", "layout": "transformers", "plain_transformers": True},
    "quantized_modules": {},
    "run": {"engine": "llamacpp", "threads": 1},
    "from_the_future": {"kept": True},
}


def test_an_old_manifest_loads_and_writes_back_the_same_keys_and_values(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(OLD))
    manifest = read_manifest(tmp_path)
    assert manifest.training["energy_j"] == 380.0 and manifest.run["engine"] == "llamacpp"
    assert manifest.extra == {"from_the_future": {"kept": True}}
    write_manifest(tmp_path, manifest)
    assert json.loads((tmp_path / MANIFEST_NAME).read_text()) == OLD


def test_a_minimal_manifest_loads_with_defaults():
    manifest = Manifest.from_dict(
        {"parent": {"name": "p"}, "execution": "simulated", "recipe": [{"method": "x"}]}
    )
    assert manifest.steps == [] and manifest.quantized_modules == {} and manifest.variant_id is None
    assert manifest.summary() == {
        "execution": "simulated",
        "recipe": [{"method": "x"}],
        "parent": {"name": "p"},
    }
    assert "training" not in manifest.to_dict() and "codes" not in manifest.to_dict()


def test_what_an_export_records_of_a_variant():
    manifest = Manifest.from_dict(OLD)
    assert manifest.provenance() == {k: OLD[k] for k in ("parent", "recipe", "execution")}


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"execution": "real"}, "lacks the 'parent' entry"),
        ({"parent": {}, "execution": "fast"}, "no valid 'execution'"),
        ({"parent": {}, "execution": "real", "quantized_modules": {"a": {"kind": "x"}}}, "malformed"),
    ],
)
def test_a_corrupt_manifest_is_one_line_naming_the_file(tmp_path, broken, message):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(broken))
    with pytest.raises(GreenlmError, match=message) as info:
        read_manifest(tmp_path)
    assert MANIFEST_NAME in str(info.value) and "\n" not in str(info.value)
