"""`greenlm distill`: heal a cut model from its teacher, every training step metered, the total forecast."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import Progress, TextColumn
from rich.table import Table

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import emit_json, fmt, note, out, progress_bar
from greenlm.distill.config import DistillConfig
from greenlm.progress import ProgressEvent
from greenlm.train.settings import TrainSettings

_D = DistillConfig
_T = TrainSettings


class DistillProgress:
    """One transient bar on stderr: preparation phases, then steps with loss, ETA and the energy forecast."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._task = None

    def __call__(self, event: ProgressEvent) -> None:
        label, done, total, info = event.what, event.done, event.total, ""
        if event.what == "training":
            status = event.detail
            label = "distilling"
            info = f"loss {status['loss']:.4f}  {status['energy_j'] / 1000:.1f} kJ"
            forecast = status.get("forecast")
            if forecast:
                eta = status.get("eta_s")
                info += (
                    f"  forecast {forecast['total_j'] / 3.6e6:.4f} kWh"
                    f" ({forecast['total_low_j'] / 3.6e6:.4f}-{forecast['total_high_j'] / 3.6e6:.4f})"
                    f", {status['forecast_carbon_g']:.2f} gCO2e"
                )
                if eta is not None:
                    info += f", ETA {eta / 60:.1f} min"
            else:
                info += "  forecast after the warm-up steps"
        elif event.what == "checkpoint":
            info = "saving"
        if self._bar is None:
            self._bar = progress_bar(TextColumn("{task.fields[info]}"))
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, info=info)
        self._bar.update(self._task, description=label, completed=done, total=total, info=info)

    def __enter__(self) -> DistillProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


@app.command()
@options.energy_options
def distill(
    out_dir: str = options.VariantOutOpt,
    teacher: str | None = typer.Option(
        None, "--teacher", "-t", help="Teacher: built-in name, HF directory or .gguf (default smollm2-135m)."
    ),
    student: str | None = typer.Option(
        None, "--student", "-s", help="Student: a variant directory cut from the teacher."
    ),
    student_recipe: str | None = typer.Option(
        None, "--student-recipe", help="Or a YAML recipe of cuts applied to a copy of the teacher."
    ),
    minutes: float | None = typer.Option(None, "--minutes", help="Budget: wall-clock minutes of training."),
    steps: int | None = typer.Option(None, "--steps", help="Budget: optimizer steps."),
    tokens: str | None = typer.Option(None, "--tokens", help="Budget: training tokens (e.g. 2M, 500k)."),
    loss: str = typer.Option(_T.loss, "--loss", help="forward-kl, reverse-kl or jsd (generalized JSD)."),
    beta: float = typer.Option(_T.beta, "--beta", help="jsd: weight of KL(teacher || mixture), in (0, 1)."),
    temperature: float = typer.Option(
        _T.temperature, "--temperature", help="Softmax temperature of the loss."
    ),
    ce_weight: float = typer.Option(
        _T.ce_weight, "--ce-weight", help="Add this times the cross-entropy on the text itself."
    ),
    lr: float = typer.Option(_T.lr, "--lr", help="Peak AdamW learning rate."),
    weight_decay: float = typer.Option(_T.weight_decay, "--weight-decay", help="AdamW weight decay."),
    warmup_fraction: float = typer.Option(
        _T.warmup_fraction, "--warmup-fraction", help="Linear warm-up, as a fraction of the steps."
    ),
    seq_len: int = typer.Option(_T.seq_len, "--seq-len", help="Tokens per training window."),
    batch_size: int = typer.Option(_T.batch_size, "--batch-size", help="Windows per micro-batch."),
    grad_accum: int = typer.Option(_T.grad_accum, "--grad-accum", help="Micro-batches per optimizer step."),
    teacher_topk: int = typer.Option(
        _T.teacher_topk,
        "--teacher-topk",
        help="Cache the teacher's top-K log-probabilities once, reuse them every epoch; 0 = teacher on the fly.",
    ),
    teacher_generate: int = typer.Option(
        _T.teacher_generate, "--teacher-generate", help="Extra training windows the teacher writes."
    ),
    train_embeddings: bool = typer.Option(
        _T.train_embeddings, "--train-embeddings", help="Also train the (tied) embedding and output head."
    ),
    precision: str = typer.Option(
        _T.precision, "--precision", help="auto (bf16 where native), bf16 or fp32."
    ),
    seed: int = typer.Option(_T.seed, "--seed", help="Data order and teacher sampling seed."),
    forecast_after: float = typer.Option(
        _T.forecast_after,
        "--forecast-after",
        help="Fraction of the steps measured before the energy forecast.",
    ),
    text: str | None = typer.Option(
        None,
        "--text",
        help=".txt or .jsonl: training reads its calibration split, quality its evaluation split.",
    ),
    calibration_samples: int = typer.Option(
        _D.calibration_samples, "--calibration-samples", help="Calibration windows for the recipe's cuts."
    ),
    calibration_tokens: options.CalibrationTokensFlag = _D.calibration_tokens,
    checkpoint_dir: str | None = typer.Option(
        None, "--checkpoint-dir", help="Where checkpoints go (default: OUT.ckpt beside --out)."
    ),
    checkpoint_minutes: float = typer.Option(
        _D.checkpoint_minutes, "--checkpoint-minutes", help="Minutes between checkpoints."
    ),
    checkpoint_steps: int | None = typer.Option(
        None, "--checkpoint-steps", help="Also checkpoint every this many steps."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --checkpoint-dir."),
    keep_checkpoint: bool = typer.Option(
        False, "--keep-checkpoint", help="Keep the checkpoint directory after success."
    ),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip quality before and after training."),
    eval_tokens: int = typer.Option(_D.eval_tokens, "--eval-tokens", help="Evaluation tokens for quality."),
    threads: int | None = options.TorchThreadsOpt,
    device: options.TrainDeviceFlag = _D.device,
    energy: options.EnergyFlags = options.EnergyOpts,
    deadline: str | None = typer.Option(
        None,
        "--deadline",
        help="Deferred training: pause in the grid's dirty hours, done within this (e.g. 24h).",
    ),
    grid_csv: str | None = options.GridCsvOpt,
    replay_speed: float = options.ReplaySpeedOpt,
    replay_from: str | None = options.ReplayFromOpt,
    grid: str | None = options.GridOpt,
    forecast: str = options.ForecastOpt,
    grid_url: str | None = options.GridUrlOpt,
    db: str | None = options.DbOpt,
    as_json: bool = options.JsonOpt,
) -> None:
    """Distill a teacher into a smaller student (a cut variant) and save it as a variant directory."""
    from greenlm.distill.runner import distill as run_distill
    from greenlm.store import Store
    from greenlm.train.settings import parse_count

    config = DistillConfig(
        out=out_dir,
        teacher=teacher,
        student=student,
        student_recipe=student_recipe,
        train=TrainSettings(
            minutes=minutes,
            steps=steps,
            tokens=parse_count(tokens, "--tokens") if tokens is not None else None,
            loss=loss,
            beta=beta,
            temperature=temperature,
            ce_weight=ce_weight,
            lr=lr,
            weight_decay=weight_decay,
            warmup_fraction=warmup_fraction,
            seq_len=seq_len,
            batch_size=batch_size,
            grad_accum=grad_accum,
            teacher_topk=teacher_topk,
            teacher_generate=teacher_generate,
            train_embeddings=train_embeddings,
            precision=precision,
            seed=seed,
            forecast_after=forecast_after,
        ),
        text=text,
        calibration_samples=calibration_samples,
        calibration_tokens=calibration_tokens,
        checkpoint_dir=checkpoint_dir,
        checkpoint_minutes=checkpoint_minutes,
        checkpoint_steps=checkpoint_steps,
        resume=resume,
        keep_checkpoint=keep_checkpoint,
        evaluate=not no_eval,
        eval_tokens=eval_tokens,
        threads=threads,
        device=device,
        energy=energy,
        deadline=deadline,
        grid_csv=grid_csv,
        replay_speed=replay_speed,
        replay_from=replay_from,
        grid_provider=grid,
        forecast=forecast,
        grid_url=grid_url,
    )
    try:
        with Store(db) as store, DistillProgress() as bar:
            result = run_distill(config, store=store, progress=bar, announce=note)
    except KeyboardInterrupt:
        if (config.checkpoint_path / "latest").is_file():
            note(
                f"checkpoint kept in {config.checkpoint_path}: rerun the same command with --resume to continue"
            )
        # typer turns a bare KeyboardInterrupt into a silent exit 130; Abort reaches greenlm's main, which
        # says "interrupted"
        raise typer.Abort() from None
    record = result.to_dict()
    if as_json:
        emit_json(record)
        return
    _print_result(record)


def _quality_cell(q: dict | None, key: str, digits: str) -> str:
    if not q or q.get(key) is None:
        return "—"
    return format(q[key], digits)


def _print_result(r: dict) -> None:
    before, after = r["quality_before"], r["quality_after"]
    if before or after:
        table = Table(title=f"{r['variant_dir']}: quality vs teacher {r['teacher']['name']}")
        table.add_column("")
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        for label, key, digits in (
            ("perplexity", "ppl", ".3f"),
            ("perplexity increase %", "ppl_increase_pct", "+.2f"),
            ("KL divergence", "kld", ".4f"),
            ("top-1 agreement", "top1_agreement", ".4f"),
        ):
            table.add_row(label, _quality_cell(before, key, digits), _quality_cell(after, key, digits))
        out.print(table)
    e = r["energy"]
    source = "ESTIMATED by a model" if e["energy_source"] == "estimated" else "measured by hardware counters"
    lines = []
    if before or after:
        q = after or before
        lines.append(
            f"quality on {q['text']}, {q['tokens_evaluated']} tokens; `greenlm eval --model DIR` for more"
        )
    lines += [
        f"training: {r['steps']} of {r['planned_steps']} planned steps ({r['stopped_by']}), {r['tokens']:,} tokens, "
        f"{r['epochs']:.2f} epochs of {r['data']['text']}"
        + (
            f" + {r['data']['teacher_generated_windows']} teacher-written windows"
            if r["data"]["teacher_generated_windows"]
            else ""
        )
        + f", {r['training_s'] / 60:.1f} min, {r['precision']}",
        f"loss ({r['loss']['loss']}, T={r['loss']['temperature']:g}): {fmt(r['loss_first'] or 0)} → {fmt(r['loss_last'] or 0)}",
        f"energy: {fmt(e['energy_j'])} J = {e['energy_kwh']:.4g} kWh, {e['carbon_g']:.3g} gCO2e "
        f"(meter {e['meter']}, {source}; {e['intensity_g_per_kwh']:g} g/kWh, {e['intensity_source']})",
    ]
    if e.get("j_per_step_median") is not None:
        per_token = e.get("j_per_training_token")
        lines.append(
            f"per step: median {fmt(e['j_per_step_median'])} J (range {fmt(e['j_per_step_min'])}–{fmt(e['j_per_step_max'])})"
            + (f", {fmt(per_token)} J per training token" if per_token else "")
        )
    f = e.get("forecast")
    if f:
        lines.append(
            f"forecast after {f['steps_done']} of {f['total_steps']} steps: {fmt(f['total_j'])} J "
            f"(range {fmt(f['total_low_j'])}–{fmt(f['total_high_j'])}); measured {fmt(e['energy_j'])} J"
            + (f", error {e['forecast_error_pct']:+.1f}%" if e.get("forecast_error_pct") is not None else "")
        )
    d = r.get("deferral")
    if d:
        lines.append(
            f"deferred: {d['carbon_g']:.3g} gCO2e against {d['carbon_if_straight_through_g']:.3g} g straight through "
            f"({d['saving_pct']:.1f}% less); {d['pauses']} pause(s), {d['paused_s']:.0f} s paused; finished "
            f"{d['finished']}, deadline {d['deadline']} ({'met' if d['deadline_met'] else 'MISSED'})"
        )
    lines.append(f"payback: {r['payback']}")
    for n in r["notes"]:
        if n.startswith(("stopped", "resumed")):
            lines.append(f"note: {n}")
    kept = f"; checkpoint kept in {r['checkpoint_dir']}" if r["checkpoint_dir"] else ""
    lines.append(f"saved to {Path(r['variant_dir'])}{kept}; stored as run {r['run_id']}")
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)
