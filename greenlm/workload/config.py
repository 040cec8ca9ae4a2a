"""The measurement workload's settings, validated once so every caller (CLI, library, optimizer) agrees."""

from __future__ import annotations

from dataclasses import dataclass, field

from greenlm.energy.settings import EnergySettings, flat_dict
from greenlm.engines.names import check_device, check_speculative_engine
from greenlm.engines.speculative import SPECULATIVE_BATCH_MESSAGE, SpeculativeConfig
from greenlm.errors import GreenlmError


@dataclass
class MeasureConfig:
    model: str | None = None  # built-in name, HF directory or .gguf; None = the built-in default
    engine: str | None = None  # None: as `optimize --out` saved it, else transformers (engines/saved.py)
    text: str | None = None  # .txt / .jsonl; None = built-in corpus. Prompts come from its evaluation split
    prompts: str | None = None  # a .jsonl / .txt of prompts that replaces the generated ones
    num_prompts: int = 4
    prompt_tokens: int = 128  # length of prompts cut from the evaluation text
    batch_size: int = 1
    max_new_tokens: int = 64
    repeats: int = 3
    warmup: bool = True
    threads: int | None = None
    device: str = "auto"  # auto: a GPU when the engine can use one here, else the CPU
    dtype: str = "float32"
    energy: EnergySettings = field(default_factory=EnergySettings)  # meter, cpu-model constants, grid, PUE
    # Speculative greedy decoding (llamacpp only): same tokens, fewer target passes when drafts are accepted.
    speculative: SpeculativeConfig | None = None

    def __post_init__(self) -> None:
        positive = {
            "--num-prompts": self.num_prompts,
            "--prompt-tokens": self.prompt_tokens,
            "--batch-size": self.batch_size,
            "--repeats": self.repeats,
        }
        for flag, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise GreenlmError(f"{flag} must be a whole number of at least 1, got {value!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 2:
            # One token comes from prefill; decode needs at least one more to be measured at all.
            raise GreenlmError(
                f"--max-new-tokens must be at least 2 (prefill makes the first), got {self.max_new_tokens!r}"
            )
        if self.threads is not None and self.threads < 1:
            raise GreenlmError(f"--threads must be at least 1, got {self.threads}")
        self.energy = EnergySettings.coerce(self.energy)
        check_device(self.device)
        if self.speculative is not None:
            if not isinstance(self.speculative, SpeculativeConfig):
                raise GreenlmError(
                    f"speculative must be a SpeculativeConfig or None, got {type(self.speculative).__name__}"
                )
            if self.engine is not None:  # resolved from the saved run settings later otherwise
                check_speculative_engine(self.engine, self.speculative)
            if self.batch_size > 1:
                raise GreenlmError(
                    f"--batch-size {self.batch_size} with --speculative: {SPECULATIVE_BATCH_MESSAGE}"
                )

    def to_dict(self) -> dict:
        return flat_dict(self)
