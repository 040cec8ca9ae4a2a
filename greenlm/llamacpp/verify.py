"""Check a written GGUF against the Hugging Face model it came from, through llama.cpp itself: its tokenizer
(every export), and the round-trip tolerance of its logits (stated here, checked by the tests).

Round-trip tolerance. A float32 GGUF export run through llama.cpp reproduces the transformers float32 logits
of the same model or variant (layers dropped, channels or heads pruned included) on the same token ids, to
within `ROUNDTRIP_TINY` for the tests' tiny random Llamas and `ROUNDTRIP_BUILTIN` for the built-in
SmolLM2-135M on a 512-token window of its evaluation text. They are not bit-identical because llama.cpp keeps
its KV cache in f16 and sums in a different order. Measured with llama-cpp-python 0.3.36 on x86 CPU (the
bounds leave margin for other CPUs' kernels): tiny models, max |logit difference| 2.6e-4 and top-1 agreement
100%; the built-in model, max |logit difference| 0.053, mean KL 8.9e-7, top-1 99.8% (1 of 512 positions);
the built-in model with 4 layers dropped, 0.056, 1.1e-6 and 100%.

Coded round trip. A file holding a variant's own quantization codes (export/codes.py) holds exactly the
variant's weights (checked value by value at export), but llama.cpp's CPU kernels for Q4_0/Q4_1/Q5_x/Q8_0 weights
quantize the activations to 8 bits per block of 32 before each dot product, so the logits differ by more than
the float round trip: `ROUNDTRIP_CODED_TINY` / `ROUNDTRIP_CODED_BUILTIN` (token embedding kept f32 so only the
coded matrices are quantized). Measured with llama-cpp-python 0.3.36 on x86: tiny Llamas, every format
(GPTQ and RTN codes, Q4_0 to Q8_0), max |logit difference| 0.0034-0.0044, mean KL 2.8e-7 to 3.4e-7; the other
tiny families up to 0.022 and 7.4e-6 (Gemma 3: its embedding is scaled by sqrt(hidden) and its logits are
sharper), top-1 92.5-100% (tiny random models have near-ties: Gemma 2 RTN Q4_0 codes flipped 3 of 40
positions at max |logit difference| 0.013, so the tiny bound asks 90%). The same GPTQ variant re-rounded by llama.cpp's own
quantizer lands 5-200x further away in KL. The built-in SmolLM2-135M with RTN Q4_0 codes (210 matrices), 512
tokens of its evaluation text: max |logit difference| 1.75, mean KL 0.0030, top-1 98.2%, where the f32 export of
the same variant measures 0.030, 5.8e-7 and 99.8%, so the difference is llama.cpp's 8-bit activations (30 layers
of SmolLM2's large activation outliers), not the codes; llama.cpp's own Q4_0 rounding of that variant: 13.1,
0.137 and 80%.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from greenlm.errors import GreenlmError
from greenlm.llamacpp.runtime import import_llama_cpp, vocab_only_model
from greenlm.llamacpp.vocab import PROBE_TEXT


@dataclass(frozen=True)
class RoundTripTolerance:
    max_abs_logit: float  # largest |llama.cpp - transformers| over every position and vocabulary entry
    max_mean_kld: float  # mean over positions of KL(transformers || llama.cpp), full vocabulary, nats
    min_top1_agreement: float  # share of positions whose most likely next token is the same


ROUNDTRIP_TINY = RoundTripTolerance(max_abs_logit=2e-3, max_mean_kld=1e-6, min_top1_agreement=1.0)
ROUNDTRIP_BUILTIN = RoundTripTolerance(max_abs_logit=0.15, max_mean_kld=1e-4, min_top1_agreement=0.99)
ROUNDTRIP_CODED_TINY = RoundTripTolerance(max_abs_logit=0.05, max_mean_kld=2e-5, min_top1_agreement=0.9)
ROUNDTRIP_CODED_BUILTIN = RoundTripTolerance(max_abs_logit=3.0, max_mean_kld=0.01, min_top1_agreement=0.95)


def llama_tokenize(path: Path, text: str) -> list[int]:
    """Token ids llama.cpp gives `text` with the vocabulary of GGUF `path` (loaded vocabulary-only)."""
    lib = import_llama_cpp()
    with vocab_only_model(lib, path) as model:
        vocab = lib.llama_model_get_vocab(model)
        data = text.encode("utf-8")
        size = len(data) + 16
        buf = (lib.llama_token * size)()
        n = lib.llama_tokenize(vocab, data, len(data), buf, size, False, False)
        return list(buf[: max(n, 0)])


def check_tokenizer(path: Path, tokenizer, text: str = PROBE_TEXT) -> str:
    """Raise unless llama.cpp tokenizes `text` exactly as `tokenizer` does; return what was checked."""
    expected = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    got = llama_tokenize(path, text)
    if got != expected:
        at = next(
            (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
            min(len(got), len(expected)),
        )
        raise GreenlmError(
            f"the exported tokenizer splits text differently in llama.cpp than in transformers (first difference "
            f"at token {at}: {got[at : at + 3]} vs {expected[at : at + 3]}): this tokenizer cannot be exported"
        )
    return f"llama.cpp and transformers agree on a {len(text)}-character probe ({len(got)} tokens)"


def tokenizer_check(path: Path, tokenizer) -> str:
    """`check_tokenizer`, except that without llama.cpp installed the float file is still usable: say so."""
    try:
        return check_tokenizer(path, tokenizer)
    except GreenlmError as exc:
        if "llama-cpp-python" in str(exc):  # no llama.cpp here: the float file is still written
            return "not checked: llama-cpp-python is not installed"
        raise
