"""`greenlm export`: write a model (built-in, HF directory or dense variant) as a GGUF file for llama.cpp."""

from __future__ import annotations

import typer
from rich.table import Table

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import LazyProgress, emit_json, err, note, out
from greenlm.export.config import ExportConfig


@app.command()
def export(
    out_path: str = typer.Option(..., "--out", "-o", help="The .gguf file to write."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Built-in name, HF directory or variant directory (default smollm2-135m)."
    ),
    fmt: str = typer.Option(
        options.default(ExportConfig, "format"), "--format", help="Output format (gguf)."
    ),
    quant: str = typer.Option(
        options.default(ExportConfig, "quant"),
        "--quant",
        "-q",
        help="auto (a quantized variant's own GGUF codes format, else f16), f32, f16, bf16, or a llama.cpp type: "
        "q8_0, q6_k, q5_k_m, q4_k_m, q4_0, ... (see the error for all).",
    ),
    codes: bool = typer.Option(
        options.default(ExportConfig, "codes"),
        "--codes/--no-codes",
        help="Write a quantized variant's own integer codes as GGUF blocks when their format is the file type "
        "(--no-codes: let llama.cpp re-round its weights).",
    ),
    embedding_type: str | None = typer.Option(
        None,
        "--embedding-type",
        help="Type of the token embedding and output head when llama.cpp quantizes (f32, f16, q8_0, ...; "
        "default: llama.cpp's choice).",
    ),
    imatrix: bool = typer.Option(
        False, "--imatrix", help="Guide quantization with an importance matrix from the calibration split."
    ),
    text: str | None = typer.Option(
        None,
        "--text",
        help=".txt or .jsonl text for --imatrix or --mixed; only its calibration split is read.",
    ),
    imatrix_samples: int = typer.Option(
        options.default(ExportConfig, "imatrix_samples"),
        "--imatrix-samples",
        help="Calibration windows for --imatrix.",
    ),
    imatrix_tokens: int = typer.Option(
        options.default(ExportConfig, "imatrix_tokens"),
        "--imatrix-tokens",
        help="Tokens per calibration window.",
    ),
    threads: int | None = typer.Option(None, "--threads", help="Quantizer threads (default: llama.cpp's)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    mixed: bool = typer.Option(
        False,
        "--mixed",
        help="Choose every weight matrix's type for the fewest bytes read per decoded token within --max-kld.",
    ),
    max_kld: float = typer.Option(
        options.default(ExportConfig, "max_kld"),
        "--max-kld",
        help="With --mixed: the KLD budget (nats per token against the float model, measured through llama.cpp "
        "on calibration text).",
    ),
    candidates: str = typer.Option(
        ",".join(options.default(ExportConfig, "candidates")),
        "--candidates",
        help="With --mixed: tensor types to choose from (f16, q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, "
        "iq4_nl, q3_k, q2_k).",
    ),
    codes_from: list[str] = typer.Option(
        [],
        "--codes-from",
        help="With --mixed: a quantized variant of this model whose greenlm codes (e.g. GPTQ Q4_0) are candidates "
        "too; repeatable.",
    ),
    sensitivity: str = typer.Option(
        options.default(ExportConfig, "sensitivity"),
        "--sensitivity",
        help="With --mixed: fisher (one backward pass per calibration window) or measured (one pass per matrix "
        "and type).",
    ),
    calibration_samples: int = typer.Option(
        options.default(ExportConfig, "calibration_samples"),
        "--calibration-samples",
        help="With --mixed: calibration windows for the sensitivity and the KLD check.",
    ),
    calibration_tokens: int = typer.Option(
        options.default(ExportConfig, "calibration_tokens"),
        "--calibration-tokens",
        help="With --mixed: tokens per window.",
    ),
    llama_quantize_args: str | None = typer.Option(
        None,
        "--llama-quantize-args",
        help="With --mixed: also write the chosen types as llama.cpp llama-quantize arguments to this file, one "
        "per line (--tensor-type PATTERN=TYPE ...; with --imatrix, --imatrix FILE.imatrix.gguf written beside).",
    ),
    as_json: bool = options.JsonOpt,
) -> None:
    """Write a model as GGUF (float, quantized by llama.cpp, a variant's own codes, or mixed types chosen for
    energy) and report the tensor types it holds."""
    from greenlm.export.runner import export_model

    config = ExportConfig(
        out=out_path,
        model=model,
        format=fmt,
        quant=quant,
        codes=codes,
        embedding_type=embedding_type,
        imatrix=imatrix,
        text=text,
        imatrix_samples=imatrix_samples,
        imatrix_tokens=imatrix_tokens,
        threads=threads,
        force=force,
        mixed=mixed,
        max_kld=max_kld,
        candidates=candidates,
        codes_from=tuple(codes_from),
        sensitivity=sensitivity,
        calibration_samples=calibration_samples,
        calibration_tokens=calibration_tokens,
        llama_quantize_args=llama_quantize_args,
    )
    try:
        with LazyProgress("exporting") as bar:
            result = export_model(config, progress=bar, announce=note)
    except KeyboardInterrupt:
        # typer would exit 130 silently; the temporary files are already gone (see greenlm/io.py)
        err.print(f"interrupted: {out_path} was not written", markup=False, style="red", soft_wrap=True)
        raise SystemExit(130) from None  # not typer.Exit: main() would add a second "interrupted" line
    record = result.to_dict()
    if as_json:
        emit_json(record)
        return
    _print_export(record)


def _print_export(r: dict) -> None:
    report = r["tensor_types"]
    table = Table(title=f"{r['out']}: {r['quant_type']} GGUF of {r['model']} ({r['file_mb']:.1f} MB)")
    for col in ("tensor type", "tensors", "share of parameters", "MB"):
        table.add_column(col, justify="right" if col != "tensor type" else "left")
    for name, entry in report["by_type"].items():
        table.add_row(name, str(entry["tensors"]), f"{entry['share_of_params']:.1%}", f"{entry['mb']:.1f}")
    out.print(table)
    shapes = {(s["n_head"], s["n_head_kv"], s["n_ff"]) for s in r["per_layer"]}
    layout = (
        f"{r['layers']} layers of {next(iter(shapes))[0]} heads / {next(iter(shapes))[1]} kv heads / "
        f"{next(iter(shapes))[2]} MLP channels"
        if len(shapes) == 1
        else f"{r['layers']} layers of different sizes"
    )
    lines = [
        f"architecture: {r['arch']} ({layout}); tokenizer: {r['tokenizer_pre']} ({r['tokenizer_check']})",
        f"written by: {r['quantizer']}",
    ]
    if r.get("mixed"):
        m = r["mixed"]
        chosen = ", ".join(f"{label} x{e['matrices']}" for label, e in m["by_option"].items())
        lines.append(
            f"mixed types for energy: {chosen}; {m['read_bytes_per_token'] / 1e6:.1f} MB read per decoded token, "
            f"{m['bits_per_weight']:.2f} bits per weight; KLD {m['measured_kld']:.4g} measured through llama.cpp on "
            f"calibration text (budget {m['max_kld']:g}, predicted {m['predicted_kld']:.4g}, "
            f"{len(m['rounds'])} round(s)); sensitivity: {m['sensitivity']}"
        )
        if m.get("llama_quantize"):
            q = m["llama_quantize"]
            lines.append(
                f"llama-quantize arguments for this plan ({q['patterns']} --tensor-type patterns"
                + (f", --imatrix {q['imatrix_file']}" if q["imatrix_file"] else "")
                + f") in {q['args_file']}; run: {q['command']}"
            )
            lines += q["notes"]
    if r.get("codes"):
        c = r["codes"]
        lines.append(
            f"greenlm codes: {c['layers']} weight matrices written as the variant's own "
            f"{'/'.join(c['formats'])} blocks, not re-rounded; {c['summary']}"
        )
    if r["imatrix"]:
        im = r["imatrix"]
        lines.append(
            f"importance matrix: {im['tensors']} tensors from {im['samples']} x {im['tokens_per_sample']} "
            "calibration tokens"
        )
    lines += r["notes"]
    for line in lines:
        out.print(line, markup=False)
