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
from importlib.metadata import version
from pathlib import Path

from greenlm.data.sources import load_text
from greenlm.data.split import split_text
from greenlm.export.config import ExportConfig
from greenlm.io import atomic_file, check_file_target, noop
from greenlm.llamacpp.gguf_writer import check_declared_architecture, source_metadata, write_model_gguf
from greenlm.llamacpp.imatrix import importance_matrix
from greenlm.llamacpp.inspect import tensor_type_report
from greenlm.llamacpp.quantize import FLOAT_TYPES, quantize_gguf
from greenlm.llamacpp.runtime import import_llama_cpp, llama_cpp_status
from greenlm.llamacpp.verify import tokenizer_check
from greenlm.models.loader import load_model
from greenlm.models.spec import resolve_model

Progress = Callable[[int, int], None]


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


def load_for_export(spec, announce: Callable[[str], None] = noop):
    """Load `spec` in float32 through transformers, as the exporter reads it."""
    announce(f"loading {spec.name} through transformers (float32)")
    return load_model(spec, dtype="float32")


def export_model(
    config: ExportConfig,
    *,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export `config.model` to `config.out`. The file appears only when every step succeeded."""
    progress = progress or noop
    announce = announce or noop
    start = time.perf_counter()
    target = Path(config.out).expanduser()
    check_file_target(target, overwrite=config.force)  # before the slow part
    quantized = config.quant not in FLOAT_TYPES
    if quantized:
        import_llama_cpp()  # quantizing needs llama.cpp: say so before loading anything
    # Everything cheap before the slow load: the model's declared architecture, the calibration text.
    spec = resolve_model(config.model)
    check_declared_architecture(spec)
    if config.imatrix:
        split_text(load_text(config.text))
    loaded = load_for_export(spec, announce)
    notes: list[str] = []
    imatrix_info = None
    with atomic_file(target, overwrite=config.force) as tmp_out:
        if not quantized:
            announce(f"writing {config.quant} GGUF")
            written = write_model_gguf(loaded, spec, tmp_out, outtype=config.quant, progress=progress)
            check = tokenizer_check(tmp_out, loaded.tokenizer)
        else:
            with tempfile.TemporaryDirectory(prefix=".greenlm-export-", dir=target.parent) as scratch:
                f32 = Path(scratch) / "model-f32.gguf"
                announce("writing f32 GGUF for the quantizer")
                written = write_model_gguf(loaded, spec, f32, outtype="f32", progress=progress)
                check = tokenizer_check(f32, loaded.tokenizer)
                imatrix = None
                if config.imatrix:
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
    quantizer = (
        f"llama.cpp llama_model_quantize (llama-cpp-python {llama_cpp_status().get('version')})"
        if quantized
        else f"gguf {version('gguf')} GGUFWriter ({config.quant}, no quantizer)"
    )
    variant = source_metadata(spec).get("variant")
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
