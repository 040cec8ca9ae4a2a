"""An importance matrix for llama.cpp's quantizer, computed on the calibration split with greenlm's own capture.

For every weight matrix llama.cpp quantizes, the mean squared activation of each input column over the
calibration tokens (what llama.cpp's imatrix tool stores as in_sum2 / counts). The quantizer then spends its
precision on the columns that carry signal. Evaluation text never reaches here.
"""

from __future__ import annotations

import gguf
import numpy as np

from greenlm.data.calibration import calibration_windows, capture_linear_inputs, linear_names
from greenlm.errors import GreenlmError
from greenlm.llamacpp.quantize import DEFAULT_IMATRIX_SAMPLES, DEFAULT_IMATRIX_TOKENS
from greenlm.progress import Progress


def importance_matrix(
    model,
    tokenizer,
    arch_name: str,
    *,
    text: str | None = None,
    samples: int = DEFAULT_IMATRIX_SAMPLES,
    tokens: int = DEFAULT_IMATRIX_TOKENS,
    progress: Progress | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """({GGUF tensor name: mean x^2 per input column}, what it was computed on)."""
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    names_map = gguf.get_tensor_name_map(arch, len(model.model.layers))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    windows = calibration_windows(tokenizer, text, samples=samples, tokens=tokens)
    stats = capture_linear_inputs(model, linear_names(model), windows, progress=progress)
    matrix = {}
    for hf_name, entry in stats.items():
        if tied and hf_name == "lm_head":
            # A tied output head multiplies by the token embedding: llama.cpp files its statistics there.
            gguf_name = "token_embd.weight"
        else:
            gguf_name = names_map.get_name(hf_name + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise GreenlmError(f"importance matrix: no GGUF name for {hf_name}")
        matrix[gguf_name] = (entry.sq_sum / max(entry.rows, 1)).numpy().astype(np.float32)
    info = {
        "source": "greenlm calibration capture (mean squared input activation per column)",
        "samples": int(windows.shape[0]),
        "tokens_per_sample": int(windows.shape[1]),
        "tensors": len(matrix),
    }
    return matrix, info
