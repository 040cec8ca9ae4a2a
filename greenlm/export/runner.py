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
from greenlm.export.llama_quantize import check_args_target, plan_as_llama_quantize_args
from greenlm.export.mixed import export_mixed
from greenlm.io import atomic_file, check_file_target, noop
from greenlm.kernels.base import QuantizedModule
from greenlm.llamacpp.gguf_writer import (
    FloatExport,
    check_declared_architecture,
    plan_tensors,
    source_metadata,
    write_model_gguf,
)
from greenlm.llamacpp.imatrix import importance_data
from greenlm.llamacpp.inspect import TensorTypeReport, tensor_type_report
from greenlm.llamacpp.quantize import FLOAT_TYPES, quantize_gguf
from greenlm.llamacpp.runtime import import_llama_cpp, llama_cpp_status
from greenlm.llamacpp.verify import tokenizer_check
from greenlm.models.loader import load_model
from greenlm.models.spec import ModelSpec, resolve_model
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


@dataclass
class _Plan:
    """What the export will write, settled by the checks before anything loads."""

    target: Path
    spec: ModelSpec
    quant: str  # the file type: a float type, a llama.cpp type, or "mixed"
    quantized: bool


@dataclass
class _Written:
    """What the write phase put in the file, for the result."""

    gguf: FloatExport
    tokenizer_check: str
    report: TensorTypeReport | None = None  # the tensor types read back from the finished file
    imatrix: dict | None = None
    codes: dict | None = None  # greenlm codes written as GGUF blocks
    mixed: dict | None = None  # per-tensor types chosen for energy


def _check(config: ExportConfig) -> _Plan:
    """Everything cheap before the slow load: the target, the model's declared architecture, the file type,
    llama.cpp when quantizing, the calibration text."""
    target = Path(config.out).expanduser()
    check_file_target(target, overwrite=config.force)
    if config.llama_quantize_args:
        check_args_target(
            Path(config.llama_quantize_args).expanduser(), overwrite=config.force, imatrix=config.imatrix
        )
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
    return _Plan(target, spec, quant, quantized)


def _load(config: ExportConfig, plan: _Plan, announce):
    """The model in float32 through transformers; a --mixed export needs a float one."""
    loaded = load_for_export(plan.spec, announce)
    if config.mixed and any(isinstance(m, QuantizedModule) for m in loaded.model.modules()):
        raise GreenlmError(
            f"--mixed chooses types for a float model, and {plan.spec.name} holds greenlm low-bit layers: export "
            "its parent with --mixed --codes-from <this variant> to offer its codes as candidates"
        )
    return loaded


def _codes(config: ExportConfig, plan: _Plan, loaded, notes: list[str]) -> tuple[ModelCodes, bool]:
    """A variant's integer codes, and whether they are written as the file's blocks (the notes say why not)."""
    spec, quant = plan.spec, plan.quant
    codes = collect_codes(spec, loaded.model) if config.codes and not config.mixed else ModelCodes()
    use_codes = plan.quantized and quant in codes.formats
    if codes.layers and not use_codes:
        why = "--no-codes" if not config.codes else f"the file type is {quant}"
        notes.append(
            f"the variant's {'/'.join(codes.formats)} codes were not written ({why}): "
            + (
                "its weights are written as floats"
                if not plan.quantized
                else "llama.cpp re-quantized its weights"
            )
        )
    elif not config.codes and spec.kind == "variant" and declared_format(spec):
        notes.append("--no-codes: llama.cpp re-quantized the variant's weights instead of writing its codes")
    if use_codes:
        notes.extend(codes.notes)
    return codes, use_codes


def _write_quantized(
    config: ExportConfig, plan: _Plan, loaded, tmp_out: Path, codes: ModelCodes, use_codes: bool,
    notes: list[str], progress: Progress, announce,
) -> _Written:  # fmt: skip
    """An f32 GGUF for the quantizer (and the importance matrix), then llama.cpp's types, greenlm's mixed
    types, or greenlm's codes with llama.cpp's blocks for the rest, into `tmp_out`."""
    quant = plan.quant
    with tempfile.TemporaryDirectory(prefix=".greenlm-export-", dir=plan.target.parent) as scratch:
        f32 = Path(scratch) / "model-f32.gguf"
        announce("writing f32 GGUF for the quantizer")
        gguf_file = write_model_gguf(loaded, plan.spec, f32, outtype="f32", progress=progress)
        written = _Written(gguf_file, tokenizer_check(f32, loaded.tokenizer))
        imatrix = imatrix_data = None
        if config.imatrix:
            announce("computing the importance matrix on the calibration split")
            imatrix_data = importance_data(
                loaded.model, loaded.tokenizer, gguf_file.arch, text=config.text, samples=config.imatrix_samples,
                tokens=config.imatrix_tokens, progress=progress,
            )  # fmt: skip
            imatrix, written.imatrix = imatrix_data.means(), imatrix_data.info
        if config.mixed:
            mixed = export_mixed(
                config, loaded, plan.spec, tmp_out, Path(scratch), f32=f32, imatrix=imatrix, progress=progress,
                announce=announce,
            )  # fmt: skip
            written.mixed = mixed.to_dict()
            notes.extend(mixed.notes)
            if config.llama_quantize_args:
                written.mixed["llama_quantize"] = plan_as_llama_quantize_args(
                    config, tmp_out, mixed.choice, imatrix_data, arch=gguf_file.arch
                )
            return written
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
            announce(f"writing {len(codes.layers)} layers as greenlm's own {'/'.join(codes.formats)} blocks")
            written.gguf, written.codes = _write_coded(
                loaded, plan.spec, tmp_out, codes, llama_out, quant, progress
            )
        return written


def _write(config: ExportConfig, plan: _Plan, loaded, notes: list[str], progress: Progress, announce):
    """The file, whole or not at all: float types straight from the model, quantized ones through llama.cpp.
    Returns what was written, read back from the file; the codes it offered."""
    codes, use_codes = _codes(config, plan, loaded, notes)
    with atomic_file(plan.target, overwrite=config.force) as tmp_out:
        if not plan.quantized:
            announce(f"writing {plan.quant} GGUF")
            gguf_file = write_model_gguf(loaded, plan.spec, tmp_out, outtype=plan.quant, progress=progress)
            written = _Written(gguf_file, tokenizer_check(tmp_out, loaded.tokenizer))
        else:
            written = _write_quantized(
                config, plan, loaded, tmp_out, codes, use_codes, notes, progress, announce
            )
        written.report = tensor_type_report(tmp_out)
        written.report.path = str(plan.target)
    return written, codes


def _quantizer(plan: _Plan, written: _Written, codes: ModelCodes) -> str:
    """Who made the file's blocks, with versions."""
    quant = plan.quant
    version_note = f"llama-cpp-python {llama_cpp_status().get('version')}" if plan.quantized else ""
    if written.mixed:
        by_option = written.mixed["by_option"]
        return (
            f"greenlm mixed types ({', '.join(by_option)}): blocks from llama.cpp's llama_model_quantize "
            f"({version_note})" + (" and greenlm codes" if any(":" in k for k in by_option) else "")
        )
    if written.codes:
        return (
            f"greenlm {codes.method or 'quantization'} codes as {'/'.join(codes.formats)} blocks for "
            f"{written.codes['tensors_checked']} weight matrices; llama.cpp llama_model_quantize ({version_note}) "
            "for the rest"
        )
    if plan.quantized:
        return f"llama.cpp llama_model_quantize ({version_note})"
    return f"gguf {version('gguf')} GGUFWriter ({quant}, no quantizer)"


def _result_notes(plan: _Plan, written: _Written, variant: dict | None, notes: list[str]) -> None:
    """What the file's reader should know: the writer's notes, k-quant fallbacks, a simulated variant."""
    notes.extend(written.gguf.notes)
    fallback = written.report.fallback
    if fallback and not written.mixed:
        widths = sorted({f["row_width"] for f in fallback})
        notes.append(
            f"{len(fallback)} weight matrices are not k-quants: llama.cpp fell back to "
            f"{', '.join(sorted({f['type'] for f in fallback}))} because their rows ({', '.join(map(str, widths))} "
            "wide) are not multiples of the 256-wide k-quant block"
        )
    if variant and variant.get("execution") == "simulated" and not written.codes:
        notes.append(
            "the variant's compression was simulated (fake-quantized float weights): the GGUF holds those values "
            f"as {plan.quant}, so llama.cpp's speed reflects {plan.quant}, not the simulated format"
        )


def export_model(
    config: ExportConfig,
    *,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export `config.model` to `config.out`. The file appears only when every step succeeded.
    Phases: check (before anything loads), load, write (atomically), then the result read back from the file."""
    progress = progress or no_progress
    announce = announce or noop
    start = time.perf_counter()
    plan = _check(config)
    loaded = _load(config, plan, announce)
    notes: list[str] = []
    written, codes = _write(config, plan, loaded, notes, progress, announce)
    variant = source_metadata(plan.spec).get("variant")
    quantizer = _quantizer(plan, written, codes)
    _result_notes(plan, written, variant, notes)
    gguf_file = written.gguf
    return ExportResult(
        model=plan.spec.name,
        model_identity=plan.spec.identity(),
        out=str(plan.target),
        format=config.format,
        quant_type=plan.quant,
        file_mb=written.report.file_mb,
        arch=gguf_file.arch,
        layers=len(gguf_file.layers),
        per_layer=[asdict(s) for s in gguf_file.layers],
        tokenizer_pre=gguf_file.tokenizer_pre,
        tokenizer_check=written.tokenizer_check,
        quantizer=quantizer,
        imatrix=written.imatrix,
        tensor_types=written.report.to_dict(),
        wall_s=time.perf_counter() - start,
        variant=variant,
        notes=notes,
        config=config.to_dict(),
        family=gguf_file.family,
        codes=written.codes,
        mixed=written.mixed,
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
