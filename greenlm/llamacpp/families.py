"""The model families the GGUF exporter writes, and what each needs beyond gguf's tensor-name map.

| family  | Hugging Face class  | llama.cpp arch | differences from Llama handled here                                     |
|---------|---------------------|----------------|-------------------------------------------------------------------------|
| llama   | LlamaForCausalLM    | llama / deci   | q/k rows permuted to llama.cpp's rotary layout; deci for per-layer sizes |
| mistral | MistralForCausalLM  | llama          | as Llama (llama.cpp's converter does the same)                           |
| qwen2   | Qwen2ForCausalLM    | qwen2          | q/k/v biases; NeoX rotary (no permutation)                              |
| qwen3   | Qwen3ForCausalLM    | qwen3          | per-head q/k RMSNorms; NeoX rotary                                       |
| gemma2  | Gemma2ForCausalLM   | gemma2         | norms stored as (1 + w); post-attention/post-ffw norms; GELU; logit soft-capping; sliding window every other layer |
| gemma3  | Gemma3ForCausalLM   | gemma3         | as gemma2 plus q/k norms; 5 sliding layers per global one, local rope base 10000 |
| phi3    | Phi3ForCausalLM     | phi3           | fused qkv and gate_up projections; partial rotary; sliding window        |

Each family refuses, in one line, the settings llama.cpp's architecture would silently compute differently
(a rope scaling it does not implement, another attention scale, another activation, another sliding pattern).
What llama.cpp reads and hard-codes was checked against its loader; the round-trip tests (tests/export)
check every family's logits through llama.cpp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gguf

from greenlm.errors import GreenlmError


@dataclass
class LayerShape:
    n_head: int
    n_head_kv: int
    n_ff: int


def _refuse(message: str) -> None:
    raise GreenlmError(message)


def rope_parameters(config, layer_type: str = "full_attention") -> dict:
    """The rope settings of one attention type: transformers 5 keeps them in `rope_parameters` (per layer type
    for Gemma 3), older versions in `rope_theta` and `rope_scaling`."""
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and layer_type in rope and isinstance(rope[layer_type], dict):
        rope = rope[layer_type]
    rope = dict(rope or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope.setdefault("rope_type", rope.get("type") or "default")
    return rope


def _check_rope(config, family: str, layer_type: str = "full_attention") -> dict:
    rope = rope_parameters(config, layer_type)
    if rope["rope_type"] not in ("default", "linear"):
        _refuse(
            f"cannot export: rope scaling '{rope['rope_type']}' of this {family} model is not one the GGUF "
            "exporter writes (default, linear)"
        )
    return rope


def _activation(config) -> str:
    return getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")


def _layer_types(config) -> list[str]:
    return list(getattr(config, "layer_types", None) or [])


def _check_attention_scale(config, family: str) -> None:
    # llama.cpp's Gemma scales queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B sizes)
    head_dim = config.head_dim
    scalar = getattr(config, "query_pre_attn_scalar", head_dim)
    if scalar != head_dim and not (
        scalar == config.hidden_size // config.num_attention_heads
        and config.num_hidden_layers in {"gemma2": (46,), "gemma3": (62,)}[family]
    ):
        _refuse(
            f"cannot export: query_pre_attn_scalar {scalar} differs from head_dim {head_dim}; llama.cpp's "
            f"{family} scales attention by 1/sqrt(head_dim) except in its 27B layout"
        )


@dataclass(frozen=True)
class Family:
    name: str
    hf_classes: tuple[str, ...]
    arch: gguf.MODEL_ARCH
    permute_qk: bool = False  # Llama's rotary layout differs from llama.cpp's; NeoX-style families do not
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + w): llama.cpp expects the 1 added
    activations: tuple[str, ...] = ("silu",)
    attn_norm: str = "input_layernorm"  # the norm whose output feeds q/k/v (AWQ folds its scales into it)
    mlp_norm: str = "post_attention_layernorm"  # the norm whose output feeds gate/up
    fused: bool = False  # Phi-3: qkv_proj and gate_up_proj
    per_layer_arch: gguf.MODEL_ARCH | None = None  # the arch that takes per-layer sizes (Llama: deci)
    check: Callable = field(default=lambda config: None, repr=False)
    metadata: Callable = field(default=lambda writer, config, head_dim: None, repr=False)
    rope_dims: Callable = field(default=lambda config, head_dim: head_dim, repr=False)
    notes: Callable = field(default=lambda config: [], repr=False)  # what the file cannot reproduce

    def validate(self, config) -> None:
        activation = _activation(config)
        if activation not in self.activations:
            _refuse(
                f"cannot export: the model uses activation {activation}, llama.cpp's {self.arch_name} uses "
                f"{' / '.join(self.activations)}"
            )
        self.check(config)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    def layer_shape(self, layer, config, head_dim: int) -> LayerShape:
        attn, mlp = layer.self_attn, layer.mlp
        if self.fused:
            n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
            rows = _out_features(attn.qkv_proj)
            if rows != (n_head + 2 * n_kv) * head_dim:
                _refuse(
                    f"cannot export: qkv_proj has {rows} rows, not ({n_head} + 2 x {n_kv}) heads of {head_dim}"
                )
            return LayerShape(n_head, n_kv, _out_features(mlp.gate_up_proj) // 2)
        q, k, v = (_out_features(getattr(attn, p)) for p in ("q_proj", "k_proj", "v_proj"))
        if q % head_dim or k % head_dim or v != k:
            _refuse(f"cannot export: a layer's q/k/v widths ({q}/{k}/{v}) are not whole heads of {head_dim}")
        if _out_features(mlp.up_proj) != _out_features(mlp.gate_proj):
            _refuse("cannot export: a layer's MLP gate and up projections differ in width")
        return LayerShape(q // head_dim, k // head_dim, _out_features(mlp.gate_proj))


def _out_features(module) -> int:
    return int(module.out_features)


# --- family-specific checks and metadata ---------------------------------------------------------------


def _llama_check(config) -> None:
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        _refuse(
            "cannot export: the model has attention or MLP biases, which the GGUF exporter does not write"
        )
    _check_rope(config, "llama")


def _llama_metadata(writer, config, head_dim: int) -> None:
    rope = rope_parameters(config)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def _qwen_check(name: str) -> Callable:
    def check(config) -> None:
        if getattr(config, "use_sliding_window", False):
            _refuse(
                f"cannot export: this {name} model uses a sliding window, which llama.cpp's {name} does not"
            )
        _check_rope(config, name)

    return check


def _check_layer_types(config, expected, problem: str) -> None:
    """Refuse with `problem` unless layer i's attention type (when the config lists them) is `expected(i)`."""
    types = _layer_types(config)
    if types and types != [expected(i) for i in range(len(types))]:
        _refuse(problem)


def _gemma2_check(config) -> None:
    _check_rope(config, "gemma2")
    _check_attention_scale(config, "gemma2")
    _check_layer_types(
        config,
        lambda i: "sliding_attention" if i % 2 == 0 else "full_attention",
        "cannot export: llama.cpp's gemma2 uses a sliding window on even layers only; this model differs",
    )
    if not getattr(config, "tie_word_embeddings", True):
        _refuse(
            "cannot export: llama.cpp's gemma2 ties the output head to the embedding; this model does not"
        )


def _gemma2_metadata(writer, config, head_dim: int) -> None:
    if getattr(config, "attn_logit_softcapping", None):
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    writer.add_sliding_window(int(config.sliding_window))


GEMMA3_LOCAL_ROPE_BASE = 10000.0  # llama.cpp's gemma3 hard-codes the sliding layers' rope base


def _gemma3_check(config) -> None:
    rope = _check_rope(config, "gemma3")
    local = rope_parameters(config, "sliding_attention")
    if local["rope_type"] != "default" or float(local["rope_theta"]) != GEMMA3_LOCAL_ROPE_BASE:
        _refuse(
            f"cannot export: llama.cpp's gemma3 runs sliding layers with rope base {GEMMA3_LOCAL_ROPE_BASE:g} "
            f"unscaled; this model uses {local['rope_type']} base {local['rope_theta']}"
        )
    del rope
    _check_attention_scale(config, "gemma3")
    _check_layer_types(
        config,
        lambda i: "full_attention" if i % 6 == 5 else "sliding_attention",
        "cannot export: llama.cpp's gemma3 uses 5 sliding-window layers per global one; this model's "
        "layer pattern differs",
    )
    if getattr(config, "attn_logit_softcapping", None):
        _refuse("cannot export: llama.cpp's gemma3 has no attention logit soft-capping; this model sets it")


def _gemma3_metadata(writer, config, head_dim: int) -> None:
    rope = rope_parameters(config)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    writer.add_sliding_window(int(config.sliding_window))


def _phi3_check(config) -> None:
    rope = rope_parameters(config)
    if rope["rope_type"] != "default":
        _refuse(
            f"cannot export: rope scaling '{rope['rope_type']}' (Phi-3's long-context variants) is not one the "
            "GGUF exporter writes; export a short-context Phi-3"
        )


def phi3_rope_dims(config, head_dim: int) -> int:
    return (
        int(getattr(config, "partial_rotary_factor", 1.0) * config.hidden_size) // config.num_attention_heads
    )


def _window_note(config, arch: str) -> list[str]:
    """A sliding window llama.cpp's architecture does not apply (Mistral's in llama, Phi-3's in phi3)."""
    window = getattr(config, "sliding_window", None)
    if window and window < getattr(config, "max_position_embeddings", 0):
        return [
            f"the model attends over a sliding window of {window} tokens; llama.cpp's {arch} architecture attends "
            f"over the whole context, so the two agree up to {window} tokens of context"
        ]
    return []


def _phi3_metadata(writer, config, head_dim: int) -> None:
    original = getattr(config, "original_max_position_embeddings", None)
    if original:
        writer.add_rope_scaling_orig_ctx_len(int(original))
    writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))


# what llama and mistral share: the same GGUF layout and checks
_LLAMA = dict(
    permute_qk=True, per_layer_arch=gguf.MODEL_ARCH.DECI, check=_llama_check, metadata=_llama_metadata
)
_GEMMA = dict(
    norm_offset=1.0,
    activations=("gelu_pytorch_tanh", "gelu_tanh"),
    mlp_norm="pre_feedforward_layernorm",
)

FAMILIES = {
    f.name: f
    for f in (
        Family(
            "llama",
            ("LlamaForCausalLM",),
            gguf.MODEL_ARCH.LLAMA,
            **_LLAMA,
        ),
        Family(
            "mistral",
            ("MistralForCausalLM",),
            gguf.MODEL_ARCH.LLAMA,
            **_LLAMA,
            notes=lambda config: _window_note(config, "llama"),
        ),
        Family("qwen2", ("Qwen2ForCausalLM",), gguf.MODEL_ARCH.QWEN2, check=_qwen_check("qwen2")),
        Family("qwen3", ("Qwen3ForCausalLM",), gguf.MODEL_ARCH.QWEN3, check=_qwen_check("qwen3")),
        Family(
            "gemma2",
            ("Gemma2ForCausalLM",),
            gguf.MODEL_ARCH.GEMMA2,
            check=_gemma2_check,
            metadata=_gemma2_metadata,
            **_GEMMA,
        ),
        Family(
            "gemma3",
            ("Gemma3ForCausalLM",),
            gguf.MODEL_ARCH.GEMMA3,
            check=_gemma3_check,
            metadata=_gemma3_metadata,
            **_GEMMA,
        ),
        Family(
            "phi3",
            ("Phi3ForCausalLM",),
            gguf.MODEL_ARCH.PHI3,
            fused=True,
            check=_phi3_check,
            metadata=_phi3_metadata,
            rope_dims=phi3_rope_dims,
            notes=lambda config: _window_note(config, "phi3"),
        ),
    )
}
BY_CLASS = {cls: f for f in FAMILIES.values() for cls in f.hf_classes}
# llama.cpp architecture names a GGUF input may declare and still be re-exported (deci: per-layer Llama)
GGUF_ARCHES = {f.arch_name for f in FAMILIES.values()} | {"deci"}


def supported_classes() -> str:
    return ", ".join(BY_CLASS)


def family_of_class(hf_class: str) -> Family:
    family = BY_CLASS.get(hf_class)
    if family is None:
        _refuse(f"cannot export architecture {hf_class} to GGUF: the exporter writes {supported_classes()}")
    return family
