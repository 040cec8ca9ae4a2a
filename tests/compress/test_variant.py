"""Variant directories: the manifest, reloading (greenlm and plain transformers), atomic writes, store rows."""

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from greenlm.compress import base
from greenlm.compress import pipeline as pipeline_module
from greenlm.compress.base import StepConfig, StepReport
from greenlm.compress.layers import DropLayers
from greenlm.compress.pipeline import CompressConfig, compress
from greenlm.compress.prune import Wanda
from greenlm.errors import GreenlmError
from greenlm.kernels import base as kernels_base
from greenlm.kernels.base import QuantizedModule
from greenlm.models import load_model, resolve_model
from greenlm.models import variant as variant_module
from greenlm.models.manifest import MANIFEST_NAME, read_manifest
from greenlm.models.variant import QUANTIZED_WEIGHTS
from greenlm.store import Store
from tests.compress.tiny import CALIBRATION, logits, prompt_ids

FAST = dict(CALIBRATION, eval_tokens=1024)


def _compress(parent, out, steps, **kw):
    return compress(
        CompressConfig(recipe=steps, out=str(out), model=str(parent), **FAST, **kw), store=Store()
    )


def test_dense_variant_has_its_manifest_and_reloads_everywhere(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "variants" / "drop1"
    result = _compress(tiny_model_dir, out, [DropLayers(count=1)])
    manifest = read_manifest(out)
    assert manifest.execution == "real" == result.execution
    assert manifest.recipe == {"steps": [{"method": "drop_layers", "count": 1, "layers": None}]}
    parent = resolve_model(str(tiny_model_dir))
    assert manifest.parent == parent.identity()
    assert manifest.steps[0]["details"]["layers_after"] == 1
    assert manifest.weights["plain_transformers"] is True and manifest.quantized_modules == {}
    quality = manifest.quality
    assert quality["reference"] == str(tiny_model_dir) and quality["tokens_evaluated"] == 2 * 511
    assert quality["kld"] > 0 and 0 <= quality["top1_agreement"] <= 1 and quality["ppl_reference"] > 0
    assert "eval_tokens=1024" in quality["budget"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", MANIFEST_NAME):
        assert (out / name).is_file()
    assert [p.name for p in out.parent.iterdir()] == ["drop1"]  # no temporary left beside it

    spec = resolve_model(str(out))
    assert spec.kind == "variant"
    loaded = load_model(spec)
    plain = AutoModelForCausalLM.from_pretrained(out)
    ids = prompt_ids(loaded.tokenizer)
    assert loaded.load_source == "variant" and plain.config.num_hidden_layers == 1
    assert torch.allclose(logits(loaded.model, ids), logits(plain, ids))

    row = Store().runs(kind="variant")[0]
    assert row["variant_id"] == manifest.variant_id and row["parent"] == str(tiny_model_dir)
    assert row["execution"] == "real" and json.loads(row["recipe_json"]) == manifest.recipe
    assert row["model"] == str(out)


def test_pruned_variant_is_simulated_and_says_why(tiny_model_dir, tmp_path):
    notes = []
    result = compress(
        CompressConfig(
            recipe=[DropLayers(count=1), Wanda(ratio=0.5)],
            out=str(tmp_path / "v"),
            model=str(tiny_model_dir),
            **FAST,
        ),
        announce=notes.append,
    )
    assert result.execution == "simulated"  # one simulated step makes the whole variant simulated
    assert [s["execution"] for s in result.manifest.steps] == ["real", "simulated"]
    assert any("no dense-kernel speed-up on CPU" in n for n in notes)
    assert any("no dense-kernel speed-up on CPU" in n for n in result.manifest.notes)


def test_existing_output_is_refused_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "taken"
    out.mkdir()
    monkeypatch.setattr("greenlm.models.load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(GreenlmError, match="already exists"):
        _compress(tiny_model_dir, out, [DropLayers(count=1)])


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failure_while_saving_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch, error):
    real_save = variant_module.save_variant_files

    def save_then_fail(model, tokenizer, directory, manifest, **kwargs):
        # everything written ... then the rename never happens
        real_save(model, tokenizer, directory, manifest, **kwargs)
        raise error

    monkeypatch.setattr(pipeline_module, "save_variant_files", save_then_fail)
    out = tmp_path / "parent" / "v"
    with pytest.raises(type(error)):
        _compress(tiny_model_dir, out, [DropLayers(count=1)])
    assert not out.exists()
    assert list((tmp_path / "parent").iterdir()) == []


def test_a_failing_step_leaves_nothing(tiny_model_dir, tmp_path):
    with pytest.raises(GreenlmError, match="cannot drop 5 of 2"):
        _compress(tiny_model_dir, tmp_path / "out" / "v", [DropLayers(count=5)])
    assert not (tmp_path / "out").exists()


def test_corrupt_manifest_is_a_clear_error(tiny_model_dir, tmp_path):
    out = tmp_path / "v"
    _compress(tiny_model_dir, out, [DropLayers(count=1)], evaluate=False)
    (out / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(GreenlmError, match="not valid JSON"):
        resolve_model(str(out))
    (out / MANIFEST_NAME).write_text(json.dumps({"parent": {}, "execution": "fast"}))
    with pytest.raises(GreenlmError, match="execution"):
        resolve_model(str(out))


# --- a low-bit module registered by the test, to check the quantized save/load path on its own ---------


class Int8Linear(torch.nn.Module, QuantizedModule):
    kind: ClassVar[str] = "test-int8"

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, 1))

    def forward(self, x):
        return x @ (self.qweight.float() * self.scale).T

    def spec(self):
        return {"out_features": self.qweight.shape[0], "in_features": self.qweight.shape[1]}

    @classmethod
    def from_spec(cls, spec):
        return cls(spec["out_features"], spec["in_features"])


@dataclass
class FakeInt8(StepConfig):
    method: ClassVar[str] = "test_int8"


def apply_test_int8(model, config, ctx):
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            q = Int8Linear(module.out_features, module.in_features)
            scale = module.weight.abs().amax(1, keepdim=True) / 127
            q.qweight.copy_((module.weight / scale).round().to(torch.int8))
            q.scale.copy_(scale)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, q)
    return StepReport(config.method, "real")


def test_quantized_variant_rebuilds_its_modules(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(base._REGISTRY, "test_int8", (FakeInt8, apply_test_int8))
    monkeypatch.setitem(kernels_base.QUANTIZED_MODULES, "test-int8", Int8Linear)
    out = tmp_path / "q"
    result = _compress(tiny_model_dir, out, [FakeInt8()])
    manifest = result.manifest
    assert manifest.weights["file"] == QUANTIZED_WEIGHTS and manifest.weights["plain_transformers"] is False
    modules = manifest.quantized_modules
    assert modules["model.layers.0.mlp.down_proj"] == {
        "kind": "test-int8",
        "spec": {"out_features": 64, "in_features": 128},
    }
    assert len(modules) == 2 * 7
    assert not (
        out / "model.safetensors"
    ).exists()  # plain transformers must not load random weights silently

    loaded = load_model(resolve_model(str(out)))
    assert isinstance(loaded.model.model.layers[1].self_attn.o_proj, Int8Linear)
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.model.embed_tokens.weight.data_ptr()
    ids = prompt_ids(loaded.tokenizer)
    # same outputs as the quantized model had in memory: its quality at creation is reproduced exactly
    from tests.compress.tiny import load_tiny

    fresh, tok = load_tiny(tiny_model_dir)
    apply_test_int8(fresh, FakeInt8(), None)
    assert torch.allclose(logits(loaded.model, ids), logits(fresh, ids), atol=1e-6)

    monkeypatch.delitem(kernels_base.QUANTIZED_MODULES, "test-int8")
    with pytest.raises(GreenlmError, match="kind 'test-int8' that this greenlm does not know"):
        load_model(resolve_model(str(out)))
