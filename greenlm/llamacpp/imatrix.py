"""An importance matrix for llama.cpp's quantizer, computed on the calibration split with greenlm's own capture.

For every weight matrix llama.cpp quantizes, the mean squared activation of each input column over the
calibration tokens (what llama.cpp's imatrix tool stores as in_sum2 / counts). The quantizer then spends its
precision on the columns that carry signal. Evaluation text never reaches here.

`write_imatrix_gguf` writes it as llama.cpp's imatrix tool does (GGUF: `<tensor>.in_sum2` sums and
`<tensor>.counts` token counts), so llama.cpp's own `llama-quantize --imatrix FILE` reuses it; the means it
derives from the file (sum / count in float32) are bit for bit the ones greenlm quantized with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from greenlm.data.calibration import calibration_windows, capture_linear_inputs, linear_names
from greenlm.errors import GreenlmError
from greenlm.llamacpp.quantize import DEFAULT_IMATRIX_SAMPLES, DEFAULT_IMATRIX_TOKENS
from greenlm.progress import Progress


@dataclass
class ImportanceMatrix:
    """Per GGUF tensor, as llama.cpp's imatrix tool keeps it: the sum over calibration tokens of each input
    column's squared activation (float32), and how many tokens were summed."""

    sums: dict[str, np.ndarray]
    tokens: dict[str, int]
    info: dict  # what it was computed on

    def means(self) -> dict[str, np.ndarray]:
        """What llama.cpp's quantizer takes: sum / tokens in float32, the division llama-quantize does."""
        return {
            name: (s / np.float32(max(self.tokens[name], 1))).astype(np.float32)
            for name, s in self.sums.items()
        }


def importance_data(
    model,
    tokenizer,
    arch_name: str,
    *,
    text: str | None = None,
    samples: int = DEFAULT_IMATRIX_SAMPLES,
    tokens: int = DEFAULT_IMATRIX_TOKENS,
    progress: Progress | None = None,
) -> ImportanceMatrix:
    """The sums and token counts of every weight matrix llama.cpp quantizes, on the calibration split."""
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    names_map = gguf.get_tensor_name_map(arch, len(model.model.layers))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    windows = calibration_windows(tokenizer, text, samples=samples, tokens=tokens)
    stats = capture_linear_inputs(model, linear_names(model), windows, progress=progress)
    sums, counts = {}, {}
    for hf_name, entry in stats.items():
        if tied and hf_name == "lm_head":
            # A tied output head multiplies by the token embedding: llama.cpp files its statistics there.
            gguf_name = "token_embd.weight"
        else:
            gguf_name = names_map.get_name(hf_name + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise GreenlmError(f"importance matrix: no GGUF name for {hf_name}")
        sums[gguf_name] = entry.sq_sum.numpy().astype(np.float32)
        counts[gguf_name] = int(entry.rows)
    info = {
        "source": "greenlm calibration capture (mean squared input activation per column)",
        "samples": int(windows.shape[0]),
        "tokens_per_sample": int(windows.shape[1]),
        "tensors": len(sums),
    }
    return ImportanceMatrix(sums, counts, info)


def write_imatrix_gguf(data: ImportanceMatrix, path: Path, *, arch: str, dataset: str) -> None:
    """`data` in llama.cpp's GGUF imatrix format (tools/imatrix: `save_imatrix`): per tensor `NAME.in_sum2`
    [columns] and `NAME.counts` [1] (one matrix, no experts), and the `imatrix.datasets`, `imatrix.chunk_count`
    and `imatrix.chunk_size` keys llama-quantize requires. `path` is written as given (callers make it atomic)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", [dataset])
    writer.add_uint32("imatrix.chunk_count", int(data.info["samples"]))
    writer.add_uint32("imatrix.chunk_size", int(data.info["tokens_per_sample"]))
    for name in sorted(data.sums):  # the imatrix tool's order
        writer.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(data.sums[name], dtype=np.float32)[None, :])
        writer.add_tensor(f"{name}.counts", np.array([[data.tokens[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
