"""llama.cpp's own quantizer (`llama_model_quantize`), optionally guided by an importance matrix.

Type names are gguf's `LlamaFileType` members as llama.cpp's quantize tool spells them (q8_0, q4_k_m, ...).
f32, f16 and bf16 are written directly by the GGUF writer; every other type is made by llama.cpp from an f32
GGUF, so the quantizer sees the model's weights unrounded.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np

from greenlm.errors import GreenlmError
from greenlm.llamacpp.inspect import file_type_name
from greenlm.llamacpp.runtime import captured_log, import_llama_cpp

FLOAT_TYPES = ("f32", "f16", "bf16")  # written by the GGUF writer itself, never by the quantizer
# The importance matrix's default calibration (see imatrix.py).
DEFAULT_IMATRIX_SAMPLES = 64
DEFAULT_IMATRIX_TOKENS = 256
# llama.cpp refuses these without an importance matrix (too few bits to quantize blind).
NEEDS_IMATRIX = ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "q2_k_s")
_NOT_TYPES = ("GUESSED", "MOSTLY_MXFP4_MOE")  # not a target; MoE-only


def quant_types() -> list[str]:
    """Every type `greenlm export --quant` accepts: the float types, then llama.cpp's quantized ones."""
    quantized = [
        file_type_name(m.value)
        for m in gguf.LlamaFileType
        if m.name not in _NOT_TYPES and file_type_name(m.value) not in FLOAT_TYPES
    ]
    return list(FLOAT_TYPES) + quantized


def check_quant_type(name: str, *, imatrix: bool = False) -> str:
    quant = (name or "").strip().lower()
    valid = quant_types()
    if quant not in valid:
        raise GreenlmError(f"unknown quant type '{name}': choose one of {', '.join(valid)}")
    if quant in NEEDS_IMATRIX and not imatrix:
        raise GreenlmError(f"quant type {quant} needs an importance matrix: add --imatrix")
    return quant


def ggml_type_of(name: str) -> gguf.GGMLQuantizationType:
    """A tensor type by its llama.cpp name (f32, f16, bf16, q8_0, q6_k, ...)."""
    try:
        return gguf.GGMLQuantizationType[name.strip().upper()]
    except KeyError:
        valid = ", ".join(t.name.lower() for t in gguf.GGMLQuantizationType)
        raise GreenlmError(f"unknown tensor type '{name}': choose one of {valid}") from None


def rows_fit(width: int, ggml_type: gguf.GGMLQuantizationType) -> bool:
    """Whether rows `width` wide split into whole blocks of `ggml_type`."""
    return width % gguf.GGML_QUANT_SIZES[ggml_type][0] == 0


def check_rows_fit(path: Path, names: tuple[str, ...], ggml_type: gguf.GGMLQuantizationType) -> None:
    """Refuse a type forced on tensors whose rows it cannot hold: llama.cpp applies a forced type without its
    usual fallback, and writes a corrupt tensor (llama-cpp-python 0.3.36 then crashes)."""
    for tensor in gguf.GGUFReader(str(path)).tensors:
        if tensor.name in names and not rows_fit(int(tensor.shape[0]), ggml_type):
            block = gguf.GGML_QUANT_SIZES[ggml_type][0]
            raise GreenlmError(
                f"{ggml_type.name.lower()} stores rows in blocks of {block} and {tensor.name} has rows "
                f"{int(tensor.shape[0])} wide: choose another embedding type"
            )


def _ftype(lib, quant: str) -> int:
    member = gguf.LlamaFileType["MOSTLY_" + quant.upper()]
    value = getattr(lib, "LLAMA_FTYPE_MOSTLY_" + quant.upper(), None)
    if value is None or int(value) != member.value:
        raise GreenlmError(f"this llama.cpp build does not know quant type {quant}: upgrade llama-cpp-python")
    return int(value)


def _imatrix_array(lib, imatrix: dict[str, np.ndarray], keep: list):
    """A NULL-terminated llama_model_imatrix_data array; `keep` holds the buffers alive during the call."""
    entries = (lib.llama_model_imatrix_data * (len(imatrix) + 1))()
    for i, (name, values) in enumerate(imatrix.items()):
        data = np.ascontiguousarray(values, dtype=np.float32)
        encoded = name.encode()
        keep.extend([data, encoded])
        entries[i].name = encoded
        entries[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = data.size
    entries[len(imatrix)].name = None  # terminator
    keep.append(entries)
    return entries


def quantize_gguf(
    src: Path,
    dst: Path,
    quant: str,
    *,
    threads: int | None = None,
    imatrix: dict[str, np.ndarray] | None = None,
    embedding_type: str | None = None,
    pure: bool = False,
) -> None:
    """Quantize GGUF `src` (f32) into `dst` as `quant` with llama.cpp; `imatrix` maps GGUF tensor names to the
    mean squared activation of each input column. `embedding_type` (a GGML type name: f32, f16, q8_0, ...)
    overrides llama.cpp's choice for the token embedding and output head; `pure` turns off llama.cpp's
    per-tensor type rules (every weight in `quant`, except where its rows do not fit the blocks)."""
    lib = import_llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = _ftype(lib, quant)
    params.nthread = threads or 0  # 0: llama.cpp's choice (the machine's cores)
    params.pure = bool(pure)
    if embedding_type is not None:
        ggml_type = ggml_type_of(embedding_type)
        check_rows_fit(src, ("token_embd.weight", "output.weight"), ggml_type)
        params.token_embedding_type = int(ggml_type)
        params.output_tensor_type = int(ggml_type)
    keep: list = []
    if imatrix:
        params.imatrix = ctypes.cast(
            _imatrix_array(lib, imatrix, keep), ctypes.POINTER(lib.llama_model_imatrix_data)
        )
    with captured_log() as captured:
        status = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0:
        raise GreenlmError(f"llama.cpp could not quantize to {quant}: {captured.reason()}")
