"""What `greenlm export` takes: validated before any model loads, with the CLI's defaults."""

from __future__ import annotations

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
    text: str | None = None  # calibration text for --imatrix; None = the built-in corpus
    imatrix_samples: int = DEFAULT_IMATRIX_SAMPLES
    imatrix_tokens: int = DEFAULT_IMATRIX_TOKENS
    threads: int | None = None  # llama.cpp quantizer threads; None = its default
    force: bool = False  # replace an existing --out file

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
        if self.text is not None and not self.imatrix:
            raise GreenlmError("--text is calibration text for --imatrix: add --imatrix or drop --text")
        for flag, value in (
            ("--imatrix-samples", self.imatrix_samples),
            ("--imatrix-tokens", self.imatrix_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GreenlmError(f"{flag} must be a whole number of at least 1, got {value!r}")
        if self.threads is not None and self.threads < 1:
            raise GreenlmError(f"--threads must be at least 1, got {self.threads}")

    def to_dict(self) -> dict:
        return asdict(self)
