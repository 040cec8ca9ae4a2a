"""`greenlm export`: a model greenlm can load → one GGUF file (float, or quantized by llama.cpp).

Steps: load the model through transformers (built-in, HF directory or dense variant), write an f32 (or the
asked-for float) GGUF with its tokenizer, check llama.cpp tokenizes like transformers, quantize with llama.cpp
(optionally with an importance matrix from the calibration split), read the result back to report the tensor
types it really holds. Everything is written beside the target under temporary names and renamed at the end.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from greenlm.errors import GreenlmError
from greenlm.export.files import atomic_file, check_target
from greenlm.export.gguf_writer import (
    FLOAT_TYPES,
    FloatExport,
    check_declared_architecture,
    write_float_gguf,
)
from greenlm.export.imatrix import DEFAULT_IMATRIX_SAMPLES, DEFAULT_IMATRIX_TOKENS
from greenlm.export.inspect import tensor_type_report
from greenlm.export.quantize import check_quant_type

FORMATS = ("gguf",)
Progress = Callable[[int, int], None]


def _noop(*_args) -> None:
    pass


@dataclass
class ExportConfig:
    out: str
    model: str | None = None  # built-in name, HF directory, variant directory; None = the built-in model
    format: str = "gguf"
    quant: str = "f16"  # f32, f16, bf16, or a llama.cpp type: q8_0, q6_k, q5_k_m, q4_k_m, q4_0, ...
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
        self.quant = check_quant_type(self.quant, imatrix=self.imatrix)
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


@dataclass
class ExportResult:
    model: str
    model_identity: dict
    out: str
    format: str
    quant_type: str
    file_mb: float
    arch: str  # llama.cpp architecture written
    layers: int
    per_layer: list[dict]  # n_head, n_head_kv, n_ff of every layer
    tokenizer_pre: str
    tokenizer_check: str
    quantizer: str
    imatrix: dict | None
    tensor_types: dict  # read back from the file (inspect.TensorTypeReport)
    wall_s: float
    variant: dict | None = None
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _source_metadata(spec, loaded) -> dict:
    meta = {"model": spec.name, "identity": spec.identity(), "exported_by": "greenlm"}
    if spec.kind == "variant":
        from greenlm.models.variant import read_manifest

        manifest = read_manifest(spec.path)
        meta["variant"] = {k: manifest.get(k) for k in ("parent", "recipe", "execution")}
    return meta


def _tokenizer_check(path: Path, tokenizer) -> str:
    from greenlm.export.verify import check_tokenizer

    try:
        return check_tokenizer(path, tokenizer)
    except GreenlmError as exc:
        if "llama-cpp-python" in str(exc):  # no llama.cpp here: the float file is still written
            return "not checked: llama-cpp-python is not installed"
        raise


def load_for_export(spec, announce: Callable[[str], None] = _noop):
    """Load `spec` in float32 through transformers, as the exporter reads it."""
    from greenlm.models import load_model

    announce(f"loading {spec.name} through transformers (float32)")
    return load_model(spec, dtype="float32")


def write_gguf(
    loaded,
    spec,
    target: Path,
    *,
    outtype: str,
    progress: Progress = _noop,
) -> FloatExport:
    return write_float_gguf(
        loaded.model,
        loaded.tokenizer,
        target,
        outtype=outtype,
        name=Path(spec.name).name,
        metadata=_source_metadata(spec, loaded),
        progress=progress,
    )


def export_model(
    config: ExportConfig,
    *,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export `config.model` to `config.out`. The file appears only when every step succeeded."""
    progress = progress or _noop
    announce = announce or _noop
    start = time.perf_counter()
    target = Path(config.out).expanduser()
    check_target(target, overwrite=config.force)  # before the slow part
    quantized = config.quant not in FLOAT_TYPES
    if quantized:
        from greenlm.engines.llamacpp_runtime import import_llama_cpp

        import_llama_cpp()  # quantizing needs llama.cpp: say so before loading anything
    # Everything cheap before the slow load: the model's declared architecture, the calibration text.
    from greenlm.models import resolve_model

    spec = resolve_model(config.model)
    check_declared_architecture(spec)
    if config.imatrix:
        from greenlm.data import load_text, split_text

        split_text(load_text(config.text))
    loaded = load_for_export(spec, announce)
    notes: list[str] = []
    imatrix_info = None
    with atomic_file(target, overwrite=config.force) as tmp_out:
        if not quantized:
            announce(f"writing {config.quant} GGUF")
            written = write_gguf(loaded, spec, tmp_out, outtype=config.quant, progress=progress)
            check = _tokenizer_check(tmp_out, loaded.tokenizer)
        else:
            from greenlm.export.quantize import quantize_gguf

            with tempfile.TemporaryDirectory(prefix=".greenlm-export-", dir=target.parent) as scratch:
                f32 = Path(scratch) / "model-f32.gguf"
                announce("writing f32 GGUF for the quantizer")
                written = write_gguf(loaded, spec, f32, outtype="f32", progress=progress)
                check = _tokenizer_check(f32, loaded.tokenizer)
                imatrix = None
                if config.imatrix:
                    from greenlm.export.imatrix import importance_matrix

                    announce("computing the importance matrix on the calibration split")
                    imatrix, imatrix_info = importance_matrix(
                        loaded.model,
                        loaded.tokenizer,
                        written.arch,
                        text=config.text,
                        samples=config.imatrix_samples,
                        tokens=config.imatrix_tokens,
                        progress=progress,
                    )
                announce(f"quantizing to {config.quant} with llama.cpp")
                quantize_gguf(f32, tmp_out, config.quant, threads=config.threads, imatrix=imatrix)
        report = tensor_type_report(tmp_out)
        report.path = str(target)
    notes.extend(written.notes)
    if report.fallback:
        widths = sorted({f["row_width"] for f in report.fallback})
        notes.append(
            f"{len(report.fallback)} weight matrices are not k-quants: llama.cpp fell back to "
            f"{', '.join(sorted({f['type'] for f in report.fallback}))} because their rows ({', '.join(map(str, widths))} "
            "wide) are not multiples of the 256-wide k-quant block"
        )
    from greenlm.engines.llamacpp_runtime import llama_cpp_status

    status = llama_cpp_status()
    quantizer = (
        f"llama.cpp llama_model_quantize (llama-cpp-python {status.get('version')})"
        if quantized
        else f"gguf {_gguf_version()} GGUFWriter ({config.quant}, no quantizer)"
    )
    variant = _source_metadata(spec, loaded).get("variant")
    if variant and variant.get("execution") == "simulated":
        notes.append(
            "the variant's compression was simulated (fake-quantized float weights): the GGUF holds those values "
            f"as {config.quant}, so llama.cpp's speed reflects {config.quant}, not the simulated format"
        )
    return ExportResult(
        model=spec.name,
        model_identity=spec.identity(),
        out=str(target),
        format=config.format,
        quant_type=config.quant,
        file_mb=report.file_mb,
        arch=written.arch,
        layers=len(written.layers),
        per_layer=[asdict(s) for s in written.layers],
        tokenizer_pre=written.tokenizer_pre,
        tokenizer_check=check,
        quantizer=quantizer,
        imatrix=imatrix_info,
        tensor_types=report.to_dict(),
        wall_s=time.perf_counter() - start,
        variant=variant,
        notes=notes,
        config=config.to_dict(),
    )


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")
