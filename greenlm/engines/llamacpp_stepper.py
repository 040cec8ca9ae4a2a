"""Continuous batching on llama.cpp: one `llama_decode` per step over the tokens of every busy slot.

Each slot is a llama.cpp sequence id with a KV stream of its own (`kv_unified = false`, as llama-server runs
its slots): a token attends only to its own sequence's cells, so attention cost follows each sequence's
length rather than the sum of all of them, and a sequence's cells sit at the same places whatever else runs,
which keeps its numerics those of running alone (see `speculative.py` on how cell placement changes CPU
flash-attention sums). A finished sequence leaves with `llama_memory_seq_rm`, freeing its stream at once.
The serving context is separate from the engine's own (which `measure` and `eval` use).
"""

from __future__ import annotations

import numpy as np

from greenlm.engines.llamacpp_engine import LlamaCppEngine
from greenlm.engines.stepper import SlotFeed, Stepper, check_slots
from greenlm.errors import GreenlmError
from greenlm.llamacpp.runtime import new_context, raise_pending_interrupt

FLASH_ATTENTION_OFF = 0  # llama_flash_attn_type: -1 auto, 0 disabled, 1 enabled


class LlamaCppStepper(Stepper):
    reuses_prefixes = True  # a slot's stream keeps its cells after release; streams copy whole (seq_cp)

    def __init__(
        self, engine: LlamaCppEngine, *, slots: int, step_tokens: int, context_tokens: int | None = None
    ):
        super().__init__()
        context_tokens = context_tokens or engine.context_tokens
        if engine.n_ctx_train > 0:
            context_tokens = min(context_tokens, engine.n_ctx_train)
        check_slots(slots, step_tokens, context_tokens)
        self.engine = engine
        self.lib = lib = engine.lib
        self.slots, self.step_tokens, self.context_tokens = slots, step_tokens, context_tokens
        self.vocab_size = engine.n_vocab
        self._vocab = engine._vocab
        params = lib.llama_context_default_params()
        params.n_ctx = context_tokens * slots  # split evenly between the slots' streams
        params.n_batch = step_tokens
        params.n_ubatch = step_tokens  # one step is one graph evaluation
        params.n_seq_max = slots
        params.n_threads = engine.threads
        params.n_threads_batch = engine.threads
        params.kv_unified = False
        # Flash attention off: with it, llama.cpp's CPU kernel sums a sequence's keys in f16 blocks whose
        # rounding depends on the step's shape, and greedy outputs of batched requests drifted from the same
        # requests run alone (1 of 8 on the built-in model, at token 30); without it they matched (8 of 8,
        # 64 tokens, three arrival patterns). See tests/serve for the check.
        params.flash_attn_type = FLASH_ATTENTION_OFF
        params.no_perf = True
        self._ctx = new_context(
            lib,
            engine._model,
            params,
            f"a serving context of {slots} slots x {context_tokens} tokens",
            " (lower --max-batch)",
        )
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(step_tokens, 0, 1)

    # ---- Stepper ---------------------------------------------------------------------------------------
    def _forward(self, feeds: list[SlotFeed], positions: list[int]) -> list[np.ndarray]:
        lib, batch = self.lib, self._batch
        i = 0
        for feed, start in zip(feeds, positions, strict=True):
            last = len(feed.token_ids) - 1
            for offset, token in enumerate(feed.token_ids):
                batch.token[i] = token
                batch.pos[i] = start + offset
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = feed.slot
                batch.logits[i] = feed.wants_logits and offset == last
                i += 1
        batch.n_tokens = i
        status = lib.llama_decode(self._ctx, batch)
        raise_pending_interrupt()
        if status != 0:
            raise GreenlmError(
                f"llama.cpp could not decode a step of {i} tokens over {len(feeds)} slots (status {status})"
            )
        outputs = sum(1 for f in feeds if f.wants_logits)
        if not outputs:
            return []
        # views of llama.cpp's buffer, valid until the next step (the caller samples first): no copy per step
        logits = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx), shape=(outputs, self.vocab_size))
        return list(logits)

    def _forget(self, slot: int) -> None:
        self.lib.llama_memory_seq_rm(self._memory, slot, -1, -1)

    def _truncate(self, slot: int, keep_tokens: int) -> None:
        if not self.lib.llama_memory_seq_rm(self._memory, slot, keep_tokens, -1):
            raise GreenlmError(f"llama.cpp cannot trim slot {slot}'s cache to {keep_tokens} tokens")

    def _copy(self, source: int, target: int) -> None:
        # Slots are separate streams, and llama.cpp copies across streams only whole: the buffer copy runs at
        # the start of the next llama_decode (before that step writes anything), then `admit` trims it.
        self.lib.llama_memory_seq_cp(self._memory, source, target, -1, -1)

    def is_end_of_generation(self, token_id: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self._vocab, token_id))

    def tokenize_prompt(self, text: str) -> list[int]:
        # a chat template's markers are special tokens; BOS once, when the model's tokenizer adds one
        return self.engine.with_bos(self.engine.tokenize(text, parse_special=True))

    @property
    def chat_template(self) -> str | None:
        return self.engine.chat_template

    @property
    def special_tokens(self) -> dict[str, str]:
        return self.engine.special_tokens

    def describe(self) -> dict:
        return {
            **super().describe(),
            "kv_cache": "one llama.cpp KV stream per slot (kv_unified false), f16",
            "prefix_reuse": "a finished request's cells stay in its slot; a new request takes the free slot with the "
            "longest shared prefix, or a copy of a running slot's stream when that shares more"
            if self.reuses_prefixes
            else "off",
            "flash_attention": False,
            "step": "one llama_decode per step: prompt chunks of new requests and one decode token per running one",
        }

    def set_threads(self, threads: int) -> None:
        self.lib.llama_set_n_threads(self._ctx, threads, threads)  # takes effect at the next llama_decode
        self.engine.threads = threads

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self.lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None) is not None:
            self.lib.llama_free(self._ctx)
            self._ctx = None
