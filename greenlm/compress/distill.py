"""Distillation as a recipe step: after structured cuts, the cut model learns the parent's next-token
distribution for a fixed budget, so "drop 2 layers, then heal for 10 minutes" is one recipe:

```yaml
steps:
  - method: drop_layers
    count: 2
  - method: distill
    minutes: 10
```

The parent (before any step) is the teacher; training reads only the calibration split. The step's report
carries the training energy, and the variant's manifest sums it under `training`, so payback and the
optimizer see what healing cost. `greenlm distill` runs the same training with checkpoints and resume.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from greenlm.compress.base import CompressContext, StepConfig, StepReport, parameter_count, register
from greenlm.energy.detect import meter_names
from greenlm.energy.settings import EnergySettings
from greenlm.errors import GreenlmError
from greenlm.kernels.base import QuantizedModule
from greenlm.models.loader import load_model
from greenlm.progress import ProgressEvent
from greenlm.train.data import check_one_batch, text_windows
from greenlm.train.loop import TrainJob, train
from greenlm.train.settings import TrainSettings


# The step is its TrainSettings (budget, loss, optimizer, batches: the defaults the CLI and the library use)
# plus the meter, flat as a recipe file writes them: `{method: distill, minutes: 10}`.
@dataclass
class Distill(StepConfig, TrainSettings):
    """Train the model so far to match the parent's next-token distribution, within one budget."""

    method = "distill"
    meter: str = "auto"

    def __post_init__(self) -> None:
        self.validate(cli=False)
        meter_names(self.meter)  # an unknown meter fails here, before any step of the recipe runs


def check_trainable(model, name: str) -> None:
    """Refuse low-bit modules: their weights are codes, not parameters gradient descent can move."""
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantizedModule)]
    if quantized:
        raise GreenlmError(
            f"{name} holds quantized modules ({quantized[0]}, ...): distill before quantizing "
            "(put distill right after the structured cuts in the recipe, quantization after it)"
        )


@register(Distill)
def apply_distill(model, config: Distill, ctx: CompressContext) -> StepReport:
    if ctx.parent is None:
        raise GreenlmError(
            "distill needs the parent model as its teacher: use it inside a recipe run by greenlm compress"
        )
    check_trainable(model, "the model")
    simulated = [r.method for r in ctx.reports if r.execution == "simulated"]
    if simulated:
        raise GreenlmError(
            f"distill after {simulated[0]}, a simulated step (its effect lives in dense float weights, and "
            "training would undo it): distill right after structured cuts (drop_layers, prune_channels, "
            "prune_heads), and quantize or sparsify after it"
        )
    data = text_windows(ctx.tokenizer, ctx.text, config.seq_len)
    check_one_batch(data, config.batch_size, config.seq_len)
    device = str(next(model.parameters()).device)
    teacher = load_model(ctx.parent, device=device).model
    if parameter_count(model) >= parameter_count(teacher):
        raise GreenlmError(
            "distill has nothing to heal: the model is not smaller than its parent; put a structured cut "
            "(drop_layers, prune_channels, prune_heads) before it"
        )
    energy = EnergySettings(meter=config.meter)  # a recipe step records its meter; the grid is the world's
    carbon = energy.carbon()
    meter = energy.open_meter()

    def progress(event: ProgressEvent) -> None:
        if event.what == "training":
            label = f"distill: {event.detail['energy_j']:.0f} J"
            if event.detail.get("forecast"):
                label += f", forecast {event.detail['forecast']['total_j']:.0f} J"
            ctx.progress(replace(event, what=label))
        elif event.what != "checkpoint":
            ctx.progress(replace(event, what=f"distill: {event.what}"))

    try:
        outcome = train(teacher, model, data, config, TrainJob(meter, carbon, progress=progress))
    finally:
        meter.close()
    model.eval()
    del teacher
    notes = list(outcome.notes)
    notes.append(
        f"trained {outcome.steps} steps ({outcome.tokens:,} tokens) in {outcome.training_s:.0f} s: "
        f"{outcome.energy['energy_j']:.0f} J ({outcome.energy['meter']}, {outcome.energy['energy_source']}), "
        f"{outcome.energy['carbon_g']:.3g} gCO2e at the world-average grid intensity"
    )
    return StepReport(
        config.method,
        "real",
        notes=notes,
        details={"teacher": ctx.parent.identity(), "training": outcome.to_dict()},
    )
