"""`greenlm export`: a model greenlm can load → one GGUF file (float, quantized by llama.cpp, or holding a
greenlm variant's own quantization codes).

Steps: load the model through transformers (built-in, HF directory or variant), write an f32 (or the
asked-for float) GGUF with its tokenizer, check llama.cpp tokenizes like transformers, quantize with llama.cpp
(optionally with an importance matrix from the calibration split), read the result back to report the tensor
types it really holds. Everything is written beside the target under temporary names and renamed at the end.

Codes. A variant quantized on a GGUF block format's grid (GPTQ, AWQ or RTN with `gguf: auto`, e.g. int4 in
groups of 32 -> Q4_0) carries integer codes and fp16 scales that are exactly that format's blocks. When the file
type is that format (`--quant auto`, the default, picks it), those layers are written as greenlm's blocks, not
re-rounded by llama.cpp; llama.cpp quantizes only what greenlm did not (embeddings, a skipped head). The file
is read back and the coded matrices compared with the variant's weights value by value.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import gguf

from greenlm.data.sources import load_text
from greenlm.data.split import split_text
from greenlm.errors import GreenlmError
from greenlm.export.codes import (
    ModelCodes,
    coded_blocks,
    collect_codes,
    copied_blocks,
    declared_format,
    verify_blocks,
)
from greenlm.export.config import AUTO, ExportConfig
from greenlm.export.mixed import export_mixed
from greenlm.io import atomic_file, check_file_target, noop
from greenlm.kernels.base import QuantizedModule
from greenlm.llamacpp.gguf_writer import (
    check_declared_architecture,
    plan_tensors,
    source_metadata,
    write_model_gguf,
)
from greenlm.llamacpp.imatrix import importance_matrix
from greenlm.llamacpp.inspect import tensor_type_report
from greenlm.llamacpp.quantize import FLOAT_TYPES, quantize_gguf
from greenlm.llamacpp.runtime import import_llama_cpp, llama_cpp_status
from greenlm.llamacpp.verify import tokenizer_check
from greenlm.models.loader import load_model
from greenlm.models.spec import resolve_model
from greenlm.progress import Progress, no_progress


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
    family: str = "llama"
    # greenlm codes written as GGUF blocks: layers, formats, how they were checked (None: none written)
    codes: dict | None = None
    mixed: dict | None = None  # per-tensor types chosen for energy (export/mixed.py); None: not mixed

    def to_dict(self) -> dict:
        return asdict(self)


def load_for_export(spec, announce: Callable[[str], None] = noop):
    """Load `spec` in float32 through transformers, as the exporter reads it."""
    announce(f"loading {spec.name} through transformers (float32)")
    return load_model(spec, dtype="float32")


def resolve_quant(config: ExportConfig, spec) -> str:
    """The file type `auto` stands for: a variant's GGUF codes format, else f16."""
    if config.quant != AUTO:
        return config.quant
    return declared_format(spec) or "f16"


def export_model(
    config: ExportConfig,
    *,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export `config.model` to `config.out`. The file appears only when every step succeeded."""
    progress = progress or no_progress
    announce = announce or noop
    start = time.perf_counter()
    target = Path(config.out).expanduser()
    check_file_target(target, overwrite=config.force)  # before the slow part
    # Everything cheap before the slow load: the model's declared architecture, the calibration text.
    spec = resolve_model(config.model)
    check_declared_architecture(spec)
    quant = "mixed" if config.mixed else resolve_quant(config, spec)
    quantized = quant not in FLOAT_TYPES
    if config.imatrix and not quantized:
        raise GreenlmError(
            f"--imatrix guides quantization; {quant} is not quantized (no codes to write here): drop --imatrix "
            "or give --quant"
        )
    if quantized:
        import_llama_cpp()  # quantizing needs llama.cpp: say so before loading anything
    if config.imatrix:
        split_text(load_text(config.text))
    loaded = load_for_export(spec, announce)
    if config.mixed and any(isinstance(m, QuantizedModule) for m in loaded.model.modules()):
        raise GreenlmError(
            f"--mixed chooses types for a float model, and {spec.name} holds greenlm low-bit layers: export its "
            "parent with --mixed --codes-from <this variant> to offer its codes as candidates"
        )
    notes: list[str] = []
    codes = collect_codes(spec, loaded.model) if config.codes and not config.mixed else ModelCodes()
    use_codes = quantized and quant in codes.formats
    if codes.layers and not use_codes:
        why = "--no-codes" if not config.codes else f"the file type is {quant}"
        notes.append(
            f"the variant's {'/'.join(codes.formats)} codes were not written ({why}): "
            + ("its weights are written as floats" if not quantized else "llama.cpp re-quantized its weights")
        )
    elif not config.codes and spec.kind == "variant" and declared_format(spec):
        notes.append("--no-codes: llama.cpp re-quantized the variant's weights instead of writing its codes")
    if use_codes:
        notes.extend(codes.notes)
    imatrix_info = None
    codes_info = None
    mixed_info = None
    with atomic_file(target, overwrite=config.force) as tmp_out:
        if not quantized:
            announce(f"writing {quant} GGUF")
            written = write_model_gguf(loaded, spec, tmp_out, outtype=quant, progress=progress)
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
                if config.mixed:
                    mixed = export_mixed(
                        config,
                        loaded,
                        spec,
                        tmp_out,
                        Path(scratch),
                        f32=f32,
                        imatrix=imatrix,
                        progress=progress,
                        announce=announce,
                    )
                    mixed_info = mixed.to_dict()
                    notes.extend(mixed.notes)
                else:
                    llama_out = Path(scratch) / f"model-{quant}.gguf" if use_codes else tmp_out
                    announce(
                        f"quantizing to {quant} with llama.cpp"
                        + (" (the layers greenlm has no codes for)" if use_codes else "")
                    )
                    quantize_gguf(
                        f32,
                        llama_out,
                        quant,
                        threads=config.threads,
                        imatrix=imatrix,
                        embedding_type=config.embedding_type,
                    )
                    if use_codes:
                        announce(
                            f"writing {len(codes.layers)} layers as greenlm's own {'/'.join(codes.formats)} blocks"
                        )
                        written, codes_info = _write_coded(
                            loaded, spec, tmp_out, codes, llama_out, quant, progress
                        )
        report = tensor_type_report(tmp_out)
        report.path = str(target)
    notes.extend(written.notes)
    if report.fallback and not mixed_info:
        widths = sorted({f["row_width"] for f in report.fallback})
        notes.append(
            f"{len(report.fallback)} weight matrices are not k-quants: llama.cpp fell back to "
            f"{', '.join(sorted({f['type'] for f in report.fallback}))} because their rows ({', '.join(map(str, widths))} "
            "wide) are not multiples of the 256-wide k-quant block"
        )
    version_note = f"llama-cpp-python {llama_cpp_status().get('version')}" if quantized else ""
    if mixed_info:
        quantizer = (
            f"greenlm mixed types ({', '.join(mixed_info['by_option'])}): blocks from llama.cpp's "
            f"llama_model_quantize ({version_note})"
            + (" and greenlm codes" if any(":" in k for k in mixed_info["by_option"]) else "")
        )
    elif codes_info:
        quantizer = (
            f"greenlm {codes.method or 'quantization'} codes as {'/'.join(codes.formats)} blocks for "
            f"{codes_info['tensors_checked']} weight matrices; llama.cpp llama_model_quantize ({version_note}) "
            "for the rest"
        )
    elif quantized:
        quantizer = f"llama.cpp llama_model_quantize ({version_note})"
    else:
        quantizer = f"gguf {version('gguf')} GGUFWriter ({quant}, no quantizer)"
    variant = source_metadata(spec).get("variant")
    if variant and variant.get("execution") == "simulated" and not codes_info:
        notes.append(
            "the variant's compression was simulated (fake-quantized float weights): the GGUF holds those values "
            f"as {quant}, so llama.cpp's speed reflects {quant}, not the simulated format"
        )
    return ExportResult(
        model=spec.name,
        model_identity=spec.identity(),
        out=str(target),
        format=config.format,
        quant_type=quant,
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
        family=written.family,
        codes=codes_info,
        mixed=mixed_info,
    )


def _write_coded(loaded, spec, target: Path, codes: ModelCodes, llama_file: Path, quant: str, progress):
    """The final file: greenlm's blocks for coded layers, llama.cpp's tensors (from `llama_file`) for the rest."""
    source = f"greenlm {codes.method or 'quantization'} codes"
    chosen: dict[str, set] = {}

    def blocks(plans):
        own = coded_blocks(codes, plans, source)
        rest = {p.gguf_name for p in plans if p.gguf_name not in own}
        chosen["own"] = set(own)
        return {**copied_blocks(llama_file, rest), **own}

    member = gguf.LlamaFileType.__members__.get("MOSTLY_" + quant.upper())
    written = write_model_gguf(
        loaded, spec, target, outtype="f32", progress=progress, blocks=blocks, file_type=member
    )
    check = verify_blocks(target, _plans_of(loaded.model), chosen["own"])
    info = {
        "layers": len(chosen["own"]),
        "formats": codes.formats,
        "method": codes.method,
        "origin": sorted({layer.origin for layer in codes.layers.values()}),
        "rest_from": f"llama.cpp {quant}",
        **check,
    }
    if check["bit_exact"] != check["tensors_checked"]:
        raise GreenlmError(f"the written codes do not reproduce the variant's weights: {check['summary']}")
    return written, info


def _plans_of(model):
    return plan_tensors(model)[4]
