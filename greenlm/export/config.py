"""What `greenlm export` takes: validated before any model loads, with the CLI's defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from greenlm.errors import GreenlmError
from greenlm.llamacpp.quantize import (
    DEFAULT_IMATRIX_SAMPLES,
    DEFAULT_IMATRIX_TOKENS,
    FLOAT_TYPES,
    check_quant_type,
    ggml_type_of,
)

FORMATS = ("gguf",)
AUTO = "auto"
# candidate tensor type -> the llama.cpp file type whose `pure` quantization gives every matrix that type
CANDIDATE_FILE_TYPES = {
    "q8_0": "q8_0",
    "q6_k": "q6_k",
    "q5_k": "q5_k_m",
    "q5_1": "q5_1",
    "q5_0": "q5_0",
    "q4_k": "q4_k_m",
    "q4_1": "q4_1",
    "q4_0": "q4_0",
    "iq4_nl": "iq4_nl",
    "q3_k": "q3_k_m",
    "q2_k": "q2_k",
}
FLOAT_CANDIDATES = ("f16",)
CANDIDATES = (*FLOAT_CANDIDATES, *CANDIDATE_FILE_TYPES)
DEFAULT_CANDIDATES = ("q8_0", "q6_k", "q5_1", "q5_0", "q4_1", "q4_0")
SENSITIVITIES = ("fisher", "measured")
DEFAULT_MAX_KLD = 0.01
DEFAULT_MIXED_SAMPLES = 16  # calibration windows for the sensitivity and the file's KLD check
DEFAULT_MIXED_TOKENS = 256


def check_candidates(candidates) -> tuple[str, ...]:
    if isinstance(candidates, str):
        candidates = candidates.split(",")
    names = tuple(str(c).strip().lower() for c in (candidates or ()) if str(c).strip())
    if not names:
        raise GreenlmError(f"--candidates is empty: give some of {', '.join(CANDIDATES)}")
    unknown = [c for c in names if c not in CANDIDATES]
    if unknown:
        raise GreenlmError(f"unknown candidate type {unknown[0]!r}: choose from {', '.join(CANDIDATES)}")
    return tuple(dict.fromkeys(names))


@dataclass
class ExportConfig:
    out: str
    model: str | None = None  # built-in name, HF directory, variant directory; None = the built-in model
    format: str = "gguf"
    # auto: a variant's own GGUF codes format (q4_0 for a default GPTQ variant), else f16; or f32, f16, bf16,
    # or a llama.cpp type: q8_0, q6_k, q5_k_m, q4_k_m, q4_0, ...
    quant: str = AUTO
    codes: bool = True  # write a variant's integer codes as GGUF blocks when their format is the file's type
    embedding_type: str | None = None  # token embedding / output head type; None: llama.cpp's choice
    imatrix: bool = False  # importance matrix from the calibration split (quantized types only)
    text: str | None = None  # calibration text for --imatrix / --mixed; None = the built-in corpus
    imatrix_samples: int = DEFAULT_IMATRIX_SAMPLES
    imatrix_tokens: int = DEFAULT_IMATRIX_TOKENS
    threads: int | None = None  # llama.cpp quantizer threads; None = its default
    force: bool = False  # replace an existing --out file
    # Mixed per-tensor types (export/mixed.py): the fewest bytes read per decoded token within max_kld.
    mixed: bool = False
    max_kld: float = DEFAULT_MAX_KLD  # nats per token vs the float model, measured through llama.cpp
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    codes_from: tuple[str, ...] = ()  # variant directories whose greenlm codes are candidates too
    sensitivity: str = (
        "fisher"  # fisher (one backward pass per window) or measured (a pass per matrix x type)
    )
    calibration_samples: int = DEFAULT_MIXED_SAMPLES
    calibration_tokens: int = DEFAULT_MIXED_TOKENS
    # with mixed: also write the plan as llama.cpp `llama-quantize` arguments to this file (export/llama_quantize.py)
    llama_quantize_args: str | None = None

    def __post_init__(self) -> None:
        if self.format != "gguf":
            raise GreenlmError(f"unknown export format '{self.format}': choose one of {', '.join(FORMATS)}")
        if not self.out or not str(self.out).strip():
            raise GreenlmError("--out is required: the .gguf file to write")
        if Path(self.out).suffix.lower() != ".gguf":
            raise GreenlmError(f"--out {self.out} should end in .gguf")
        if (self.quant or "").strip().lower() == AUTO:
            self.quant = AUTO
        else:
            self.quant = check_quant_type(self.quant, imatrix=self.imatrix)
        if self.embedding_type is not None:
            self.embedding_type = ggml_type_of(self.embedding_type).name.lower()
            if self.quant in FLOAT_TYPES:
                raise GreenlmError(
                    f"--embedding-type applies when llama.cpp quantizes; {self.quant} is not quantized: drop it"
                )
        if not isinstance(self.codes, bool):
            raise GreenlmError(f"codes must be true or false, got {self.codes!r}")
        if self.imatrix and self.quant in FLOAT_TYPES:
            raise GreenlmError(
                f"--imatrix guides quantization; {self.quant} is not quantized: drop --imatrix"
            )
        if self.text is not None and not (self.imatrix or self.mixed):
            raise GreenlmError("--text is calibration text for --imatrix or --mixed: add one or drop --text")
        for flag, value in (
            ("--imatrix-samples", self.imatrix_samples),
            ("--imatrix-tokens", self.imatrix_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GreenlmError(f"{flag} must be a whole number of at least 1, got {value!r}")
        if self.threads is not None and self.threads < 1:
            raise GreenlmError(f"--threads must be at least 1, got {self.threads}")
        self._check_mixed()

    def _check_mixed(self) -> None:
        if isinstance(self.codes_from, (str, Path)):
            self.codes_from = (str(self.codes_from),)
        self.codes_from = tuple(str(c) for c in self.codes_from)
        self.candidates = check_candidates(self.candidates)
        if not self.mixed:
            changed = [
                flag
                for flag, value, default in (
                    ("--max-kld", self.max_kld, DEFAULT_MAX_KLD),
                    ("--candidates", self.candidates, DEFAULT_CANDIDATES),
                    ("--codes-from", self.codes_from, ()),
                    ("--sensitivity", self.sensitivity, "fisher"),
                    ("--calibration-samples", self.calibration_samples, DEFAULT_MIXED_SAMPLES),
                    ("--calibration-tokens", self.calibration_tokens, DEFAULT_MIXED_TOKENS),
                    ("--llama-quantize-args", self.llama_quantize_args, None),
                )
                if value != default
            ]
            if changed:
                raise GreenlmError(f"{changed[0]} applies to --mixed: add --mixed or drop it")
            return
        if self.quant != AUTO:
            raise GreenlmError(f"--mixed chooses every tensor's type itself: drop --quant {self.quant}")
        if not self.codes:
            raise GreenlmError(
                "--no-codes has no effect with --mixed (use --codes-from to offer codes): drop it"
            )
        if self.embedding_type is not None:
            raise GreenlmError("--mixed chooses the embedding's type too: drop --embedding-type")
        if (
            isinstance(self.max_kld, bool)
            or not isinstance(self.max_kld, (int, float))
            or not math.isfinite(self.max_kld)
            or self.max_kld <= 0
        ):
            raise GreenlmError(f"--max-kld must be a positive number of nats per token, got {self.max_kld!r}")
        if self.sensitivity not in SENSITIVITIES:
            raise GreenlmError(
                f"unknown --sensitivity {self.sensitivity!r}: choose {' or '.join(SENSITIVITIES)}"
            )
        for flag, value, low in (
            ("--calibration-samples", self.calibration_samples, 1),
            ("--calibration-tokens", self.calibration_tokens, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise GreenlmError(f"{flag} must be a whole number of at least {low}, got {value!r}")
        if self.llama_quantize_args is not None:
            args = Path(self.llama_quantize_args).expanduser()
            if (
                not str(self.llama_quantize_args).strip()
                or args.resolve() == Path(self.out).expanduser().resolve()
            ):
                raise GreenlmError(
                    f"--llama-quantize-args {self.llama_quantize_args!r} must name a text file other than --out"
                )
        for directory in self.codes_from:
            if not Path(directory).expanduser().is_dir():
                raise GreenlmError(
                    f"--codes-from {directory} is not a directory: give a greenlm variant directory"
                )

    def to_dict(self) -> dict:
        return asdict(self)
