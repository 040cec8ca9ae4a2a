"""Write a loaded transformers model of a supported family (families.py), with its tokenizer, as a GGUF file
llama.cpp runs: float tensors, or quantized blocks made elsewhere (greenlm's own codes, blocks copied from a
file llama.cpp quantized) in place of any weight.

Tensor names come from gguf's `TensorNameMap`, keys from `GGUFWriter`'s typed setters, the vocabulary from
gguf's vocab helpers (vocab.py). What differs between the Hugging Face and llama.cpp layouts is handled here
and in families.py:
- Llama q/k projections: Hugging Face orders each head's rotary dimensions as two halves, llama.cpp's rope
  as interleaved pairs, so q and k rows are permuted per head (the same reordering llama.cpp's converter
  applies to LlamaModel). Quantized blocks are whole rows, so the same row order applies to them.
- Gemma's norms multiply by (1 + w); llama.cpp's by w: 1 is added.
- Layer sizes are read from the weights, not the config, so a variant with layers dropped or channels/heads
  pruned exports as it really is. When Llama layers differ in size the file uses llama.cpp's `deci`
  architecture (Llama blocks whose head counts and feed-forward widths are per-layer arrays).
- Low-bit modules (greenlm's quantized variants) are written as their dequantized float weights unless the
  caller supplies their blocks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from greenlm.errors import GreenlmError
from greenlm.io import noop
from greenlm.kernels.base import QuantizedModule
from greenlm.llamacpp.families import (
    BY_CLASS,
    GGUF_ARCHES,
    Family,
    LayerShape,
    family_of_class,
    rope_parameters,
    supported_classes,
)
from greenlm.llamacpp.inspect import gguf_architecture
from greenlm.llamacpp.quantize import FLOAT_TYPES
from greenlm.llamacpp.vocab import build_vocab
from greenlm.llamacpp.vocab_copy import gguf_file_vocab
from greenlm.models.manifest import read_manifest
from greenlm.progress import Progress, ProgressEvent

# Hugging Face architectures the exporter writes, and what llama.cpp calls them.
EXPORTABLE_ARCHITECTURES = {cls: family.arch_name for cls, family in BY_CLASS.items()}
__all__ = ["LayerShape"]


@dataclass
class Blocks:
    """A weight already in a GGUF block format: uint8 [rows, bytes per row] in llama.cpp's row order."""

    data: np.ndarray
    qtype: gguf.GGMLQuantizationType
    source: str  # who made the blocks: "greenlm gptq codes", "llama.cpp q4_0", ...


@dataclass
class TensorPlan:
    """One tensor of the file: where it comes from in the model and how it is laid out for llama.cpp."""

    hf_name: str
    gguf_name: str
    data: np.ndarray  # float32, in llama.cpp's layout (rows permuted, norm offset added)
    row_order: np.ndarray | None  # the permutation applied to Hugging Face's rows (None: unchanged)

    @property
    def is_matrix(self) -> bool:
        return self.data.ndim == 2


@dataclass
class FloatExport:
    path: Path
    arch: str  # llama.cpp architecture written: llama, or deci for per-layer sizes, qwen2, gemma3, ...
    outtype: str
    layers: list[LayerShape]
    vocab_size: int
    tokenizer_pre: str
    tensors: int
    family: str = "llama"
    notes: list[str] = field(default_factory=list)
    blocks_written: dict[str, str] = field(default_factory=dict)  # GGUF name -> source of its blocks

    @property
    def uniform(self) -> bool:
        return all(s == self.layers[0] for s in self.layers)


GgufExport = FloatExport
BlockSource = dict[str, Blocks] | Callable[[list[TensorPlan]], dict[str, Blocks]] | None


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
    known = GGUF_ARCHES if spec.is_gguf else EXPORTABLE_ARCHITECTURES
    if arch is not None and arch not in known:
        _refuse(f"cannot export architecture {arch} to GGUF: the exporter writes {supported_classes()}")


def check_exportable(model) -> Family:
    """The model's family, or a GreenlmError naming what the exporter cannot write."""
    config = model.config
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    if arch not in EXPORTABLE_ARCHITECTURES:
        family_of_class(arch)  # refuses with the list of supported classes
    family = family_of_class(type(model).__name__)
    family.validate(config)
    for name, module in model.named_modules():
        if name.endswith(("_proj", "lm_head")) and not isinstance(module, (torch.nn.Linear, QuantizedModule)):
            _refuse(
                f"cannot export: {name} is a {type(module).__name__}, not a dense linear layer or a greenlm "
                "low-bit module"
            )
    return family


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def layer_shapes(model, family: Family | None = None) -> tuple[int, list[LayerShape]]:
    """head_dim and every decoder layer's real head counts and MLP width, from its weights."""
    family = family or family_of_class(type(model).__name__)
    config = model.config
    head_dim = _head_dim(config)
    shapes = [family.layer_shape(layer, config, head_dim) for layer in model.model.layers]
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
    """The tokenizer's files as gguf's helpers read them: whatever it was loaded from, saved afresh, with the
    SentencePiece model it was built from (transformers keeps its path but does not save it again)."""
    tokenizer.save_pretrained(scratch)
    model_file = getattr(tokenizer, "vocab_file", None)
    if isinstance(model_file, str) and model_file.endswith(".model") and Path(model_file).is_file():
        shutil.copyfile(model_file, scratch / "tokenizer.model")
    return scratch


def _encode(array: np.ndarray, outtype: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor: norms and biases stay f32 (llama.cpp needs them so)."""
    if array.ndim == 1 or outtype == "f32":
        return array.astype(np.float32), None
    if outtype == "f16":
        return array.astype(np.float16), None
    return gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.BF16), (
        gguf.GGMLQuantizationType.BF16
    )


def dense_state(model) -> dict[str, torch.Tensor]:
    """The model's tensors by Hugging Face name, low-bit modules as their dequantized `.weight`."""
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedModule)}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if module in quantized:
            if leaf == "qweight":
                state[f"{module}.weight"] = quantized[module].dequantized_weight()
            elif leaf == "bias":
                state[key] = tensor
            continue
        state[key] = tensor
    return state


def _arch(family: Family, shapes: list[LayerShape]) -> gguf.MODEL_ARCH:
    if all(s == shapes[0] for s in shapes):
        return family.arch
    if family.per_layer_arch is None:
        _refuse(
            f"cannot export: the layers of this {family.name} model differ in size (pruned unevenly), which "
            f"llama.cpp's {family.arch_name} cannot hold; only Llama models export with per-layer sizes"
        )
    return family.per_layer_arch


def plan_tensors(model) -> tuple[Family, gguf.MODEL_ARCH, int, list[LayerShape], list[TensorPlan]]:
    """Every tensor the GGUF file of `model` holds, in llama.cpp's layout, with its Hugging Face origin."""
    family = check_exportable(model)
    config = model.config
    head_dim, shapes = layer_shapes(model, family)
    arch = _arch(family, shapes)
    names = gguf.get_tensor_name_map(arch, len(shapes))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plans = []
    for hf_name, tensor in dense_state(model).items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            _refuse(f"cannot export: no GGUF name for tensor {hf_name}")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        order = None
        if family.permute_qk and hf_name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            layer = shapes[int(hf_name.split(".layers.")[1].split(".")[0])]
            heads = layer.n_head if ".q_proj" in hf_name else layer.n_head_kv
            order = permute_rotary(np.arange(data.shape[0]), heads)
            data = data[order]
        if family.norm_offset and hf_name.endswith("norm.weight"):
            data = data + np.float32(family.norm_offset)
        plans.append(TensorPlan(hf_name, gguf_name, data, order))
    return family, arch, head_dim, shapes, plans


def _file_type(outtype: str, blocks: dict[str, Blocks], file_type) -> gguf.LlamaFileType:
    if file_type is not None:
        return file_type
    if blocks:  # the type most quantized weights have
        counts: dict = {}
        for b in blocks.values():
            counts[b.qtype] = counts.get(b.qtype, 0) + b.data.size
        qtype = max(counts, key=counts.get)
        member = gguf.LlamaFileType.__members__.get("MOSTLY_" + qtype.name)
        if member is not None:
            return member
    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}.get(
        outtype, gguf.LlamaFileType.MOSTLY_BF16
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
    blocks: BlockSource = None,
    file_type: gguf.LlamaFileType | None = None,
    vocab=None,
) -> FloatExport:
    """Write `model` and `tokenizer` to `out_path` as GGUF: every tensor in `outtype` (norms and biases in f32)
    except the weights `blocks` supplies by GGUF name (a dict, or a function of the tensor plans returning
    one), written as those blocks. `vocab` (a vocab_copy.CopiedVocab) replaces the vocabulary built from
    `tokenizer`."""
    if outtype not in FLOAT_TYPES:
        _refuse(f"unknown float type '{outtype}': choose one of {', '.join(FLOAT_TYPES)}")
    family, arch, head_dim, shapes, plans = plan_tensors(model)
    blocks = dict((blocks(plans) if callable(blocks) else blocks) or {})
    config = model.config
    uniform = arch == family.arch
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    n_layer = len(shapes)
    vocab_rows = int(model.get_input_embeddings().weight.shape[0])
    if vocab is None:
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
    writer.add_rope_dimension_count(family.rope_dims(config, head_dim))
    writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    family.metadata(writer, config, head_dim)  # after the common keys: a family may override one
    writer.add_vocab_size(vocab_rows)
    writer.add_file_type(_file_type(outtype, blocks, file_type))
    if metadata:
        writer.add_string("greenlm.source", json.dumps(metadata, sort_keys=True, default=str))
    vocab.add_to(writer)

    written: dict[str, str] = {}
    for index, plan in enumerate(plans):
        block = blocks.pop(plan.gguf_name, None)
        if block is not None:
            rows = plan.data.shape[0]
            if block.data.ndim != 2 or block.data.shape[0] != rows:
                _refuse(
                    f"cannot export: the blocks given for {plan.gguf_name} have {block.data.shape[0]} rows, not {rows}"
                )
            data = np.ascontiguousarray(block.data)
            # quantized blocks are bytes (the writer needs their type); f32/f16 copies carry their own dtype
            writer.add_tensor(plan.gguf_name, data, raw_dtype=block.qtype if data.dtype == np.uint8 else None)
            written[plan.gguf_name] = block.source
        else:
            data, raw_dtype = _encode(plan.data, outtype)
            writer.add_tensor(plan.gguf_name, data, raw_dtype=raw_dtype)
        if progress:
            progress(ProgressEvent("writing tensors", index + 1, len(plans), "tensors"))
    if blocks:
        _refuse(
            f"cannot export: blocks given for tensors the model does not have: {', '.join(sorted(blocks))}"
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    notes = []
    if not uniform:
        notes.append("layers differ in size: written as llama.cpp architecture 'deci' with per-layer arrays")
    notes.extend(family.notes(config))
    if vocab.source != "tokenizer.json":
        notes.append(f"tokenizer: llama.cpp's {vocab.tokenizer_model} model, from {vocab.source}")
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantizedModule)]
    if quantized:
        not_blocks = [n for n in quantized if names_for(plans, n) not in written]
        if not_blocks:
            notes.append(
                f"{len(not_blocks)} greenlm low-bit layers are written as their dequantized weights "
                f"({outtype} before any llama.cpp quantization), not as their own codes"
            )
    return FloatExport(
        path=out_path,
        arch=arch_name,
        outtype=outtype,
        layers=shapes,
        vocab_size=vocab_rows,
        tokenizer_pre=vocab.pre,
        tensors=len(plans),
        family=family.name,
        notes=notes,
        blocks_written=written,
    )


def names_for(plans: list[TensorPlan], module: str) -> str | None:
    """The GGUF name of Hugging Face module `module`'s weight."""
    return next((p.gguf_name for p in plans if p.hf_name == f"{module}.weight"), None)


def source_metadata(spec) -> dict:
    """What the file records about where it came from: the model's identity and, for a variant, its recipe."""
    meta = {"model": spec.name, "identity": spec.identity(), "exported_by": "greenlm"}
    if spec.kind == "variant":
        meta["variant"] = read_manifest(spec.path).provenance()
    return meta


def write_model_gguf(
    loaded,
    spec,
    target: Path,
    *,
    outtype: str,
    progress: Progress = noop,
    blocks: BlockSource = None,
    file_type: gguf.LlamaFileType | None = None,
) -> FloatExport:
    """Write a loaded model (`models.LoadedModel`) of `spec` as GGUF, with its provenance; a GGUF input keeps
    its own tokenizer keys."""
    vocab = None
    if spec.is_gguf:
        vocab = gguf_file_vocab(spec.path, int(loaded.model.get_input_embeddings().weight.shape[0]))
    return write_float_gguf(
        loaded.model,
        loaded.tokenizer,
        target,
        outtype=outtype,
        name=Path(spec.name).name,
        metadata=source_metadata(spec),
        progress=progress,
        blocks=blocks,
        file_type=file_type,
        vocab=vocab,
    )
