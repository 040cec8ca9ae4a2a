"""Write a loaded transformers Llama-family model, with its tokenizer, as a float GGUF file llama.cpp runs.

Tensor names come from gguf's `TensorNameMap`, keys from `GGUFWriter`'s typed setters, the vocabulary from
gguf's vocab helpers (vocab.py). Two things differ between the layouts and are handled here:
- Llama q/k projections: Hugging Face orders each head's rotary dimensions as two halves, llama.cpp's rope
  as interleaved pairs, so q and k rows are permuted per head (the same reordering llama.cpp's converter
  applies to LlamaModel).
- Layer sizes are read from the weights, not the config, so a variant with layers dropped or channels/heads
  pruned exports as it really is. When layers differ in size the file uses llama.cpp's `deci` architecture
  (Llama blocks whose head counts and feed-forward widths are per-layer arrays), which llama.cpp loads.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from greenlm.errors import GreenlmError
from greenlm.io import noop
from greenlm.llamacpp.inspect import gguf_architecture
from greenlm.llamacpp.quantize import FLOAT_TYPES
from greenlm.llamacpp.vocab import build_vocab
from greenlm.models.manifest import read_manifest

# Hugging Face architectures the exporter writes, and what llama.cpp calls them.
EXPORTABLE_ARCHITECTURES = {"LlamaForCausalLM": "llama"}
Progress = Callable[[int, int], None]


@dataclass
class LayerShape:
    n_head: int
    n_head_kv: int
    n_ff: int


@dataclass
class FloatExport:
    path: Path
    arch: str  # llama.cpp architecture written: llama, or deci for per-layer sizes
    outtype: str
    layers: list[LayerShape]
    vocab_size: int
    tokenizer_pre: str
    tensors: int
    notes: list[str] = field(default_factory=list)

    @property
    def uniform(self) -> bool:
        return all(s == self.layers[0] for s in self.layers)


def _refuse(message: str) -> None:
    raise GreenlmError(message)


def declared_architecture(spec) -> str | None:
    """The architecture a model says it is, read from its config.json or GGUF header without loading it."""
    if spec.is_gguf:
        return gguf_architecture(spec.path)
    try:
        config = json.loads((spec.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # resolve_model checked it already; the loader will say what is wrong
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return architectures[0] if isinstance(architectures, list) and architectures else None


def check_declared_architecture(spec) -> None:
    """Refuse, before the slow load, a model whose config or GGUF header names an architecture the exporter
    does not write. (`check_exportable` checks the loaded model in full.)"""
    arch = declared_architecture(spec)
    known = EXPORTABLE_ARCHITECTURES.values() if spec.is_gguf else EXPORTABLE_ARCHITECTURES
    if arch is not None and arch not in known:
        _refuse(
            f"cannot export architecture {arch} to GGUF: the exporter writes "
            f"{', '.join(EXPORTABLE_ARCHITECTURES)} (the Llama family) only"
        )


def check_exportable(model) -> str:
    """The model's Hugging Face architecture name, or a GreenlmError naming what the exporter cannot write."""
    config = model.config
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    if arch not in EXPORTABLE_ARCHITECTURES or type(model).__name__ not in EXPORTABLE_ARCHITECTURES:
        _refuse(
            f"cannot export architecture {arch} to GGUF: the exporter writes "
            f"{', '.join(EXPORTABLE_ARCHITECTURES)} (the Llama family) only"
        )
    if getattr(config, "hidden_act", "silu") != "silu":
        _refuse(f"cannot export: the model uses activation {config.hidden_act}, llama.cpp's Llama uses silu")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        _refuse(
            "cannot export: the model has attention or MLP biases, which the GGUF exporter does not write"
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ("default", "linear"):
        _refuse(f"cannot export: rope scaling '{rope_type}' is not supported by the GGUF exporter")
    for name, module in model.named_modules():
        if name.endswith(("_proj", "lm_head")) and not isinstance(module, torch.nn.Linear):
            _refuse(
                f"cannot export: {name} is a {type(module).__name__}, not a dense linear layer (a greenlm low-bit "
                "variant); export the dense model and choose a llama.cpp --quant instead"
            )
    return arch


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def layer_shapes(model) -> tuple[int, list[LayerShape]]:
    """head_dim and every decoder layer's real head counts and MLP width, from its weights."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shapes = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        q, k = attn.q_proj.out_features, attn.k_proj.out_features
        if q % head_dim or k % head_dim or attn.v_proj.out_features != k:
            _refuse(
                f"cannot export: a layer's q/k/v widths ({q}/{k}/{attn.v_proj.out_features}) are not whole heads "
                f"of {head_dim}"
            )
        if mlp.up_proj.out_features != mlp.gate_proj.out_features:
            _refuse("cannot export: a layer's MLP gate and up projections differ in width")
        shapes.append(LayerShape(q // head_dim, k // head_dim, mlp.gate_proj.out_features))
    if any(s.n_head % s.n_head_kv for s in shapes):
        _refuse("cannot export: a layer's query heads are not a multiple of its key/value heads")
    return head_dim, shapes


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from Hugging Face's rotary layout (two halves) to llama.cpp's (pairs)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _tokenizer_dir(tokenizer, scratch: Path) -> Path:
    """The tokenizer's files as gguf's helpers read them: whatever it was loaded from, saved afresh."""
    tokenizer.save_pretrained(scratch)
    return scratch


def _encode(array: np.ndarray, outtype: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor: norms stay f32 (llama.cpp needs them so)."""
    if array.ndim == 1 or outtype == "f32":
        return array.astype(np.float32), None
    if outtype == "f16":
        return array.astype(np.float16), None
    return gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.BF16), (
        gguf.GGMLQuantizationType.BF16
    )


def write_float_gguf(
    model,
    tokenizer,
    out_path: Path,
    *,
    outtype: str = "f32",
    name: str = "",
    metadata: dict | None = None,
    progress: Progress | None = None,
) -> FloatExport:
    """Write `model` (a loaded LlamaForCausalLM) and `tokenizer` to `out_path` as GGUF in `outtype`."""
    if outtype not in FLOAT_TYPES:
        _refuse(f"unknown float type '{outtype}': choose one of {', '.join(FLOAT_TYPES)}")
    check_exportable(model)
    config = model.config
    head_dim, shapes = layer_shapes(model)
    uniform = all(s == shapes[0] for s in shapes)
    arch = gguf.MODEL_ARCH.LLAMA if uniform else gguf.MODEL_ARCH.DECI
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    n_layer = len(shapes)
    vocab_rows = int(model.get_input_embeddings().weight.shape[0])
    with tempfile.TemporaryDirectory(prefix="greenlm-tokenizer-") as scratch:
        vocab = build_vocab(_tokenizer_dir(tokenizer, Path(scratch)), vocab_rows)

    writer = gguf.GGUFWriter(str(out_path), arch_name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or getattr(config, "_name_or_path", "") or "greenlm-export")
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(n_layer)
    if uniform:
        writer.add_feed_forward_length(shapes[0].n_ff)
        writer.add_head_count(shapes[0].n_head)
        writer.add_head_count_kv(shapes[0].n_head_kv)
    else:
        writer.add_feed_forward_length([s.n_ff for s in shapes])
        writer.add_head_count([s.n_head for s in shapes])
        writer.add_head_count_kv([s.n_head_kv for s in shapes])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(vocab_rows)
    writer.add_file_type(
        {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}.get(
            outtype, gguf.LlamaFileType.MOSTLY_BF16
        )
    )
    if metadata:
        writer.add_string("greenlm.source", json.dumps(metadata, sort_keys=True, default=str))
    vocab.add_to(writer)

    names = gguf.get_tensor_name_map(arch, n_layer)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = model.state_dict()
    items = [(k, v) for k, v in state.items() if not (tied and k == "lm_head.weight")]
    for index, (hf_name, tensor) in enumerate(items):
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            _refuse(f"cannot export: no GGUF name for tensor {hf_name}")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("self_attn.q_proj.weight") or hf_name.endswith("self_attn.k_proj.weight"):
            layer = shapes[int(hf_name.split(".layers.")[1].split(".")[0])]
            data = permute_rotary(data, layer.n_head if ".q_proj" in hf_name else layer.n_head_kv)
        data, raw_dtype = _encode(data, outtype)
        writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
        if progress:
            progress(index + 1, len(items))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    notes = []
    if not uniform:
        notes.append("layers differ in size: written as llama.cpp architecture 'deci' with per-layer arrays")
    return FloatExport(
        path=out_path,
        arch=arch_name,
        outtype=outtype,
        layers=shapes,
        vocab_size=vocab_rows,
        tokenizer_pre=vocab.pre,
        tensors=len(items),
        notes=notes,
    )


def source_metadata(spec) -> dict:
    """What the file records about where it came from: the model's identity and, for a variant, its recipe."""
    meta = {"model": spec.name, "identity": spec.identity(), "exported_by": "greenlm"}
    if spec.kind == "variant":
        manifest = read_manifest(spec.path)
        meta["variant"] = {k: manifest.get(k) for k in ("parent", "recipe", "execution")}
    return meta


def write_model_gguf(loaded, spec, target: Path, *, outtype: str, progress: Progress = noop) -> FloatExport:
    """Write a loaded model (`models.LoadedModel`) of `spec` as a float GGUF, with its provenance."""
    return write_float_gguf(
        loaded.model,
        loaded.tokenizer,
        target,
        outtype=outtype,
        name=Path(spec.name).name,
        metadata=source_metadata(spec),
        progress=progress,
    )
