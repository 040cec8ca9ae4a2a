"""Training data for distillation: token windows from the calibration split only, optionally extended with
text the teacher writes, in an order fixed by (seed, epoch) so a resumed run sees exactly the same batches.

The evaluation split is never read here: quality is measured on text training never saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from greenlm.data.sources import load_text
from greenlm.data.split import split_text
from greenlm.errors import GreenlmError
from greenlm.progress import Progress, ProgressEvent
from greenlm.train.losses import TeacherTopK, teacher_topk

GENERATE_PROMPT_TOKENS = 32  # each generated window starts from this many tokens of a calibration window
GENERATE_BATCH = 8
# The cached teacher pays for itself only over several epochs, and only if its one pass is a small part of a
# wall-clock budget: above this share the teacher runs on the fly instead.
CACHE_MAX_BUDGET_SHARE = 0.25
CACHE_MAX_BYTES = 4 * 2**30  # ids int32 + log-probabilities float32 per position and token kept


def cache_bytes(num_windows: int, seq_len: int, k: int) -> int:
    return num_windows * seq_len * k * 8


@dataclass
class TrainingData:
    windows: torch.Tensor  # [N, seq_len] token ids: text windows first, then teacher-generated ones
    text: str  # e.g. "builtin:pydoc-topics/calibration"
    text_fingerprint: str
    text_windows: int
    generated_windows: int = 0

    @property
    def seq_len(self) -> int:
        return int(self.windows.shape[1])

    def describe(self) -> dict:
        return {
            "text": self.text,
            "text_fingerprint": self.text_fingerprint,
            "seq_len": self.seq_len,
            "text_windows": self.text_windows,
            "text_tokens": self.text_windows * self.seq_len,
            "teacher_generated_windows": self.generated_windows,
            "teacher_generated_tokens": self.generated_windows * self.seq_len,
        }


def text_windows(tokenizer, text: str | None, seq_len: int) -> TrainingData:
    """Non-overlapping windows of `seq_len` tokens cut from the calibration split of `text`."""
    split = split_text(load_text(text))
    ids = tokenizer(split.text("calibration"), add_special_tokens=False)["input_ids"]
    count = len(ids) // seq_len
    windows = torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)
    return TrainingData(windows, split.describe("calibration"), split.fingerprint, count)


def check_one_batch(data: TrainingData, batch_size: int, seq_len: int) -> None:
    if data.text_windows < batch_size:
        have = data.text_windows * seq_len
        raise GreenlmError(
            f"the calibration split of {data.text.rsplit('/', 1)[0]} gives {data.text_windows} window(s) of "
            f"{seq_len} tokens, fewer than one batch of {batch_size}: give more text (--text), or a smaller "
            f"--batch-size or --seq-len (about {have + seq_len} tokens of calibration text are usable now)"
        )


def epoch_order(num_windows: int, epoch: int, seed: int) -> torch.Tensor:
    """The shuffled window order of one epoch: a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_windows, generator=generator)


def batches_per_epoch(num_windows: int, batch_size: int) -> int:
    return num_windows // batch_size  # the incomplete last batch is dropped: every batch has the same shape


def micro_batch_indices(num_windows: int, batch_size: int, index: int, seed: int) -> tuple[torch.Tensor, int]:
    """Window indices of global micro-batch `index` (0-based), and its epoch."""
    per_epoch = batches_per_epoch(num_windows, batch_size)
    epoch, position = divmod(index, per_epoch)
    order = epoch_order(num_windows, epoch, seed)
    return order[position * batch_size : (position + 1) * batch_size], epoch


def teacher_generate(
    teacher,
    prompts_from: torch.Tensor,
    count: int,
    *,
    seed: int,
    autocast: Callable,
    progress: Progress | None = None,
) -> torch.Tensor:
    """`count` windows the teacher samples (temperature 1, full distribution), each continuing the first
    GENERATE_PROMPT_TOKENS tokens of a calibration window spread through the text, to the window length."""
    seq_len = prompts_from.shape[1]
    prompt_len = min(GENERATE_PROMPT_TOKENS, seq_len // 2)
    picks = torch.linspace(0, prompts_from.shape[0] - 1, count).round().long()
    out = []
    torch.manual_seed(seed)  # generate() samples from the global generator
    device = next(teacher.parameters()).device
    with torch.inference_mode(), autocast():
        for start in range(0, count, GENERATE_BATCH):
            prompts = prompts_from[picks[start : start + GENERATE_BATCH], :prompt_len].to(device)
            new = seq_len - prompt_len
            generated = teacher.generate(
                input_ids=prompts,
                attention_mask=torch.ones_like(prompts),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=teacher.config.eos_token_id,
            )
            out.append(generated[:, :seq_len].cpu())
            if progress:
                progress(
                    ProgressEvent("teacher writing text", min(start + GENERATE_BATCH, count), count, "texts")
                )
    return torch.cat(out)


def teacher_topk_cache(
    teacher,
    windows: torch.Tensor,
    k: int,
    temperature: float,
    *,
    batch_size: int,
    autocast: Callable,
    progress: Progress | None = None,
    keep_going: Callable[[int, int, float], bool] | None = None,
) -> TeacherTopK | None:
    """One teacher pass over every window: its top-k tokens and log-probabilities per position, kept for
    every epoch (ids int32, log-probabilities float32). `keep_going(done, total, elapsed_s)` may stop the
    pass early (then None)."""
    device = next(teacher.parameters()).device
    ids, logp = [], []
    start_s = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            if (
                keep_going
                and start
                and not keep_going(start, windows.shape[0], time.perf_counter() - start_s)
            ):
                return None
            batch = windows[start : start + batch_size].to(device)
            with autocast():
                logits = teacher(input_ids=batch, use_cache=False).logits
            top = teacher_topk(logits, k, temperature)
            ids.append(top.ids.to(torch.int32).cpu())
            logp.append(top.logp.float().cpu())
            if progress:
                progress(
                    ProgressEvent(
                        "caching teacher top-k",
                        min(start + batch_size, windows.shape[0]),
                        windows.shape[0],
                        "windows",
                    )
                )
    return TeacherTopK(ids=torch.cat(ids), logp=torch.cat(logp))
