"""Execution modules: nn.Linear replacements that run quantized weights on PyTorch's low-bit CPU kernels.

Every low-bit matmul path PyTorch offers on a CPU has a module here, so each can be measured against float32
on the model's own shapes (`time_kernels`, `bench/quant_kernels.py`):

| kernel               | op                                                   | weights                 | activations            |
|----------------------|------------------------------------------------------|-------------------------|------------------------|
| int8_weight_bf16/f32 | torch._weight_int8pack_mm                            | int8 per output channel | bf16 / float32         |
| int4_packed_bf16/f32 | aten._weight_int4pack_mm_for_cpu                     | int4, groups 32..256    | bf16 / float32         |
| int8_dynamic_<eng>   | torch.ao dynamic quantized linear (x86, fbgemm,      | int8 per output channel | int8, per token        |
|                      | onednn, qnnpack engines) + torch._int_mm             |                         |                        |
| int4_dynamic         | aten._dyn_quant_matmul_4bit (KleidiAI on Arm; a      | int4 symmetric          | int8, per token        |
|                      | reference fallback elsewhere)                        |                         |                        |
| dequant_eager        | dequantize, then a float32 matmul, every call        | any bits                | float32                |
| dequant_compiled     | the same under torch.compile (inductor)              | any bits                | float32                |

The weight is stored as codes, scales and zero points (`quant_math.QuantizedWeight`) in plain tensors, so a
variant's safetensors file holds them; kernel layouts (packed int4, torch.ao packed params, bf16 scales) are
made from them on first use and never saved. Timing against float32 lives in `quant_timing`. `_dynamic` kernels also quantize activations (W8A8/W4A8): one
scale per token, which at batch-1 decode is what the kernels do anyway; with several tokens in one call
(prefill, evaluation) `int8_dynamic` runs `torch._int_mm` on per-token codes so no token's outliers
coarsen another token's grid.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from greenlm.errors import GreenlmError
from greenlm.kernels.base import QuantizedModule, register_module
from greenlm.kernels.quant_grid import QuantizedWeight, dequantize

INT4_PACKED_GROUPS = (32, 64, 128, 256)  # what the CPU int4 kernel accepts
QUANT_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[out, in] codes 0..15 -> [out, in/2] bytes, even column in the low nibble."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    # one interleaving copy instead of two strided writes: several times faster on model-sized weights
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


@contextmanager
def quantized_engine(name: str):
    """Select a torch.ao quantized engine for prepacking, then restore the previous one."""
    if name not in torch.backends.quantized.supported_engines:
        raise GreenlmError(
            f"torch quantized engine '{name}' is not available in this PyTorch build "
            f"(available: {', '.join(e for e in torch.backends.quantized.supported_engines if e != 'none')})"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


class QuantLinear(torch.nn.Module, QuantizedModule):
    """Common storage and plumbing; subclasses say which weights they take and how they multiply."""

    kind: ClassVar[str]
    # The one kernel option a subclass has (activation dtype, engine) and its values.
    option_name: ClassVar[str | None] = None
    option_values: ClassVar[tuple[str, ...]] = ()
    # Every kernel here is a CPU op: engines keep a model holding one on the CPU under --device auto.
    cpu_only: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int | None,
        bias: bool = False,
        input_scale: bool = False,
        option: str | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        self.option = (
            option if option is not None else (self.option_values[0] if self.option_values else None)
        )
        if self.option_values and self.option not in self.option_values:
            raise GreenlmError(
                f"{self.kind}: {self.option_name} must be one of {', '.join(self.option_values)}"
            )
        groups = 1 if group_size is None else in_features // group_size
        packed_width = in_features // 2 if bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, packed_width, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, groups))
        self.register_buffer("zero", torch.zeros(out_features, groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features) if input_scale else None)
        self._prepared: Any = None

    # --- construction ---------------------------------------------------------------------------------

    @classmethod
    def check(cls, bits: int, group_size: int | None, symmetric: bool, in_features: int) -> str | None:
        """Why this kernel cannot run such a weight, or None when it can."""
        return None

    @classmethod
    def from_quantized(
        cls,
        weight: QuantizedWeight,
        *,
        bias: torch.Tensor | None = None,
        input_scale: torch.Tensor | None = None,
        option: str | None = None,
    ) -> QuantLinear:
        out_features, in_features = weight.shape
        reason = cls.check(weight.bits, weight.group_size, weight.symmetric, in_features)
        if reason:
            raise GreenlmError(f"kernel {cls.kind} cannot run this weight: {reason}")
        module = cls(
            in_features,
            out_features,
            weight.bits,
            weight.group_size,
            bias=bias is not None,
            input_scale=input_scale is not None,
            option=option,
        )
        with torch.no_grad():
            module.qweight.copy_(pack_int4(weight.q) if weight.bits == 4 else weight.q)
            module.scale.copy_(weight.scale)
            module.zero.copy_(weight.zero)
            if bias is not None:
                module.bias.copy_(bias.detach().float())
            if input_scale is not None:
                module.input_scale.copy_(input_scale.detach().float())
        return module

    def spec(self) -> dict[str, Any]:
        spec = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bits": self.bits,
            "group_size": self.group_size,
            "bias": self.bias is not None,
            "input_scale": self.input_scale is not None,
        }
        if self.option_name:
            spec[self.option_name] = self.option
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> QuantLinear:
        spec = dict(spec)
        option = spec.pop(cls.option_name, None) if cls.option_name else None
        try:
            return cls(**spec, option=option)
        except TypeError as exc:
            raise GreenlmError(f"bad {cls.kind} module spec {spec}: {exc}") from None

    def _load_from_state_dict(self, *args, **kwargs):
        self._prepared = None  # kernel layouts derive from the buffers: rebuild after a load
        return super()._load_from_state_dict(*args, **kwargs)

    # --- views of the stored weight --------------------------------------------------------------------

    def codes(self) -> torch.Tensor:
        return unpack_int4(self.qweight) if self.bits == 4 else self.qweight

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.codes(), self.scale, self.zero, self.bits, self.group_size)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 [out, in] weight this module is equivalent to (input scaling folded in)."""
        w = dequantize(self.codes(), self.scale, self.zero, self.group_size)
        return w / self.input_scale[None, :] if self.input_scale is not None else w

    @property
    def kernel(self) -> str:
        """This module's name in `KERNELS` (what configs and timings call it)."""
        for name, kernel in KERNELS.items():
            if kernel.module is type(self) and kernel.option == self.option:
                return name
        return f"{self.kind}_{self.option}" if self.option_name else self.kind

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, kernel={self.kernel}"
        )

    # --- execution -------------------------------------------------------------------------------------

    def _prepare(self) -> Any:
        raise NotImplementedError

    def _matmul(self, x: torch.Tensor, prepared: Any) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prepared = self._prepared
        if prepared is None:
            if x.device.type != "cpu":
                raise GreenlmError(
                    f"quantized kernel {self.kernel} runs on CPU only; load this variant with --device cpu"
                )
            with torch.inference_mode(False), torch.no_grad():
                prepared = self._prepared = self._prepare()
        x2 = x.reshape(-1, self.in_features)
        if self.input_scale is not None:
            x2 = x2 / self.input_scale
        y = self._matmul(x2, prepared)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class WeightOnlyLinear(QuantLinear):
    """A weight-only kernel of one bit width; the option is the activation dtype."""

    option_name = "activations"
    option_values = ("bfloat16", "float32")
    weight_bits: ClassVar[int]

    @classmethod
    def check(cls, bits, group_size, symmetric, in_features):
        if bits != cls.weight_bits:
            return f"it runs {cls.weight_bits}-bit weights only"
        return cls.check_group(group_size)

    @classmethod
    def check_group(cls, group_size) -> str | None:
        raise NotImplementedError


@register_module
class Int8WeightLinear(WeightOnlyLinear):
    """Weight-only int8 per output channel on `torch._weight_int8pack_mm` (activations bf16 or float32).

    The kernel takes symmetric int8 with one scale per row; an asymmetric zero point is folded out as
    scale * (128 - zero) * sum(x), one extra multiply-add per output."""

    kind = "int8_weight"
    weight_bits = 8

    @classmethod
    def check_group(cls, group_size):
        return (
            "it takes one scale per output channel (group_size must be null)"
            if group_size is not None
            else None
        )

    def _prepare(self):
        dtype = getattr(torch, self.option)
        w_int8 = (self.qweight.to(torch.int16) - 128).to(torch.int8).contiguous()
        scale = self.scale[:, 0]
        offset = scale * (128.0 - self.zero[:, 0])
        return w_int8, scale.to(dtype), None if bool((offset == 0).all()) else offset, dtype

    def _matmul(self, x, prepared):
        w_int8, scale, offset, dtype = prepared
        xa = x.to(dtype)
        y = torch._weight_int8pack_mm(xa, w_int8, scale)
        if offset is not None:
            y = y.float() + xa.float().sum(-1, keepdim=True) * offset[None, :]
        return y


@register_module
class Int4PackedLinear(WeightOnlyLinear):
    """Weight-only int4 with group-wise scales and zeros on `aten._weight_int4pack_mm_for_cpu`."""

    kind = "int4_packed"
    weight_bits = 4

    @classmethod
    def check_group(cls, group_size):
        if group_size not in INT4_PACKED_GROUPS:
            return f"its group size must be one of {', '.join(map(str, INT4_PACKED_GROUPS))}"
        return None

    def _prepare(self):
        dtype = getattr(torch, self.option)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes().to(torch.int32), 1)
        # The kernel computes (q - 8) * scale + zero_f: zero_f = scale * (8 - zero) gives scale * (q - zero).
        scale_zero = torch.stack([self.scale, self.scale * (8.0 - self.zero)], dim=-1).transpose(0, 1)
        return packed, scale_zero.contiguous().to(dtype), dtype

    def _matmul(self, x, prepared):
        packed, scale_zero, dtype = prepared
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(dtype), packed, self.group_size, scale_zero)


def _has_vnni() -> bool:
    """AVX512-VNNI: int8 dot products accumulate in int32 (vpdpbusd) instead of saturating int16 pairs."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(probe()) if probe is not None else False


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric uint8 codes per row, as the torch.ao dynamic kernels choose them for a single row:
    range [min(x, 0), max(x, 0)], integer zero point. Returns (codes - 128 as int8, scale [M, 1], zero [M, 1])."""
    x = x.float()
    low = x.amin(-1, keepdim=True).clamp(max=0.0)
    high = x.amax(-1, keepdim=True).clamp(min=0.0)
    scale = (high - low) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-low / scale).clamp(0, 255)
    codes = torch.clamp(torch.round(x / scale) + zero, 0, 255)
    return (codes - 128).to(torch.int8), scale, zero


@register_module
class Int8DynamicLinear(QuantLinear):
    """W8A8: int8 weights per output channel, activations quantized to 8 bits per token at run time.

    One token per call (batch-1 decode) runs the torch.ao dynamic quantized linear of the chosen engine;
    several tokens run `torch._int_mm` on per-token codes, so prefill and evaluation use the same
    per-token grid decode does (`torch._int_mm` accumulates in int32 and never saturates).

    Without AVX512-VNNI the x86, fbgemm and onednn engines sum pairs of uint8 x int8 products in int16
    (vpmaddubsw), which saturates on full-range activations: measured here, 2-8% relative output error
    instead of 0.5%. Those engines then get reduce_range (7-bit activation codes), as torch.ao's default
    qconfig does; qnnpack accumulates in int32 and ignores the flag."""

    kind = "int8_dynamic"
    option_name = "engine"
    option_values = QUANT_ENGINES

    @classmethod
    def check(cls, bits, group_size, symmetric, in_features):
        if bits != 8:
            return "it runs 8-bit weights only"
        if group_size is not None:
            return "it takes one scale per output channel (group_size must be null)"
        if not symmetric:
            return "torch.ao's per-channel int8 weights are symmetric (set symmetric: true)"
        return None

    @property
    def reduce_range(self) -> bool:
        return self.option != "qnnpack" and not _has_vnni()

    def _prepare(self):
        w_int8 = (self.qweight.to(torch.int16) - 128).to(torch.int8).contiguous()
        scale = self.scale[:, 0].contiguous()
        with warnings.catch_warnings():
            # torch.ao's quantized tensors are deprecated (pytorch#184982) but still the only way in.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
            warnings.filterwarnings("ignore", message=".*deprecated.*")
            qw = torch._make_per_channel_quantized_tensor(
                w_int8, scale.double(), torch.zeros(self.out_features, dtype=torch.long), 0
            )
            with quantized_engine(self.option):
                packed = torch.ops.quantized.linear_prepack(qw, None)
        return packed, w_int8.t().contiguous(), scale, w_int8.sum(1, dtype=torch.int32).float()

    def _matmul(self, x, prepared):
        packed, w_t, scale, row_sum = prepared
        if x.shape[0] == 1:
            return torch.ops.quantized.linear_dynamic(x.float(), packed, self.reduce_range)
        codes, x_scale, x_zero = quantize_per_token(x)
        acc = torch._int_mm(codes, w_t).float()
        # x ~= x_scale * (codes + 128 - x_zero); w = scale * w_int8
        return x_scale * scale[None, :] * (acc + (128.0 - x_zero) * row_sum[None, :])


@register_module
class Int4DynamicLinear(QuantLinear):
    """W4A8 on `aten._dyn_quant_matmul_4bit`: symmetric int4 weights, activations int8 per token. PyTorch
    runs it on KleidiAI micro-kernels on Arm CPUs; elsewhere the op falls back to a reference loop."""

    kind = "int4_dynamic"

    @classmethod
    def check(cls, bits, group_size, symmetric, in_features):
        if bits != 4:
            return "it runs 4-bit weights only"
        if not symmetric:
            return "it takes symmetric weights only (set symmetric: true)"
        if group_size is not None and group_size % 32:
            return "its group size must be a multiple of 32 (or null for per-channel)"
        return None

    def _prepare(self):
        block = self.group_size or self.in_features
        packed = torch.ops.aten._dyn_quant_pack_4bit_weight(
            self.qweight, self.scale.contiguous(), None, block, self.in_features, self.out_features
        )
        return packed, block

    def _matmul(self, x, prepared):
        packed, block = prepared
        return torch.ops.aten._dyn_quant_matmul_4bit(
            x.float().contiguous(), packed, block, self.in_features, self.out_features
        )


def _dequant_matmul(x, q, scale, zero, columns: int, group_size: int):
    # per-group scale and zero broadcast over a [out, groups, size] view: no [out, in] copies of them;
    # the same arithmetic as grid.dequantize, so the same floats
    rows = q.shape[0]
    grouped = q.float().view(rows, columns // group_size, group_size)
    w = (scale[..., None] * grouped - (scale * zero)[..., None]).view(rows, columns)
    return F.linear(x.float(), w)


_compiled_dequant_matmul = None


def _compiled():
    global _compiled_dequant_matmul
    if _compiled_dequant_matmul is None:
        _compiled_dequant_matmul = torch.compile(_dequant_matmul, dynamic=True)
    return _compiled_dequant_matmul


@register_module
class DequantLinear(QuantLinear):
    """Dequantize the codes and multiply in float32 on every call, eagerly or under torch.compile: the
    generic path for any bit width (int3 has no other)."""

    kind = "dequant"
    option_name = "mode"
    option_values = ("eager", "compiled")

    def _prepare(self):
        return self.codes(), self.group_size or self.in_features

    def _matmul(self, x, prepared):
        codes, size = prepared
        fn = _compiled() if self.option == "compiled" else _dequant_matmul
        return fn(x, codes, self.scale, self.zero, self.in_features, size)


# --- kernel names, as configs and the benchmark use them -------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    name: str
    module: type[QuantLinear]
    option: str | None
    weight_only: bool  # False: activations are quantized too (changes the model's math beyond the weights)
    auto: bool  # considered by kernel "auto" (compiled kernels are not: compiling takes minutes)

    def check(
        self, bits: int, group_size: int | None, symmetric: bool, in_features: int | None = None
    ) -> str | None:
        return self.module.check(bits, group_size, symmetric, in_features or 0)

    def build(self, weight: QuantizedWeight, **kwargs) -> QuantLinear:
        return self.module.from_quantized(weight, option=self.option, **kwargs)


KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in [
        Kernel("int8_weight_bf16", Int8WeightLinear, "bfloat16", True, True),
        Kernel("int8_weight_f32", Int8WeightLinear, "float32", True, True),
        Kernel("int4_packed_bf16", Int4PackedLinear, "bfloat16", True, True),
        Kernel("int4_packed_f32", Int4PackedLinear, "float32", True, True),
        *(Kernel(f"int8_dynamic_{e}", Int8DynamicLinear, e, False, False) for e in QUANT_ENGINES),
        Kernel("int4_dynamic", Int4DynamicLinear, None, False, False),
        Kernel("dequant_eager", DequantLinear, "eager", True, True),
        Kernel("dequant_compiled", DequantLinear, "compiled", True, False),
    ]
}
DENSE = "dense"  # not a kernel: dequantized float weights in a plain nn.Linear (simulated)
KERNEL_CHOICES = ("auto", DENSE, *KERNELS)


def available_kernels() -> list[str]:
    """Kernel names whose ops this PyTorch build has."""
    names = []
    for name, kernel in KERNELS.items():
        if (
            kernel.module is Int8DynamicLinear
            and kernel.option not in torch.backends.quantized.supported_engines
        ):
            continue
        names.append(name)
    return names
