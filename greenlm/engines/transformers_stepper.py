"""Continuous batching on transformers: dynamic padded batches over one shared KV cache.

Every busy slot is a row of one `DynamicCache`. A step feeds each row its new tokens right-aligned in a
[rows, T] block (T = the longest feed; shorter feeds are padded on the left and masked), so one forward pass
serves a prompt chunk of a new request and the decode token of every running one. Rows therefore carry
masked holes; when more than half of the cache is holes it is compacted (each row's real cells gathered to
the right; keys keep the rotary positions they were computed at, so moving them changes nothing). A new
request adds an empty row, a finished one is dropped at once.

transformers (5.x) has its own continuous batching (`generate_batch`, paged attention), and it runs on CPU,
but it steps in a thread of its own: greenlm could not put an energy window around each step, so per-request
energy could not be split by what each step did. Hence this loop.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from transformers import DynamicCache

from greenlm.engines.stepper import SlotFeed, Stepper, check_slots
from greenlm.engines.transformers_engine import TransformersEngine, set_threads
from greenlm.errors import GreenlmError

COMPACT_WASTE = 0.5  # compact the cache when more than this share of its cells are holes
COMPACT_MIN_CELLS = 64  # ... and it is at least this long (short caches are cheap either way)


class TransformersStepper(Stepper):
    def __init__(
        self, engine: TransformersEngine, *, slots: int, step_tokens: int, context_tokens: int | None = None
    ):
        super().__init__()
        context_tokens = min(context_tokens or engine.max_context, engine.max_context)
        check_slots(slots, step_tokens, context_tokens)
        config = engine.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        if getattr(text_config, "use_sliding_window", False) or "sliding_attention" in (
            getattr(text_config, "layer_types", None) or []
        ):
            raise GreenlmError(
                f"{engine.model_name} uses sliding-window attention, which the transformers serving loop does not "
                "batch: serve it with --engine llamacpp"
            )
        self.engine = engine
        self.slots, self.step_tokens, self.context_tokens = slots, step_tokens, context_tokens
        self.vocab_size = int(engine.model.get_output_embeddings().weight.shape[0])
        self.tokenizer = engine.tokenizer
        self._rows: list[int] = []  # row index -> slot
        self._cache = None
        self._mask = None  # [rows, cells] long, 1 where a cell holds a real token
        eos = self.tokenizer.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        generation = getattr(engine.model, "generation_config", None)
        extra = getattr(generation, "eos_token_id", None) if generation is not None else None
        ids += extra if isinstance(extra, list) else [extra]
        self._eos = {int(i) for i in ids if i is not None}
        # transformers 5.x renamed the KV-cache argument (past_key_values still works there, with a warning)
        forward = inspect.signature(type(engine.model).forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"

    # ---- cache rows ------------------------------------------------------------------------------------
    def _layers(self):
        return self._cache.layers if self._cache is not None else []

    def _add_rows(self, slots: list[int]) -> None:
        device = self.engine.device
        if self._mask is None:
            self._mask = torch.zeros((0, 0), dtype=torch.long, device=device)
        cells = self._mask.shape[1]
        for layer in self._layers():
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            for name in ("keys", "values"):
                t = getattr(layer, name)
                pad = t.new_zeros((len(slots), *t.shape[1:]))
                setattr(layer, name, torch.cat([t, pad], 0))
        self._mask = torch.cat([self._mask, self._mask.new_zeros((len(slots), cells))], 0)
        self._rows += slots

    def _keep_rows(self, keep: list[int]) -> None:
        index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
        for layer in self._layers():
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
        self._mask = self._mask.index_select(0, index)
        self._rows = [self._rows[i] for i in keep]

    def _compact(self) -> None:
        """Gather each row's real cells to the right end of a shorter cache."""
        mask = self._mask
        counts = mask.sum(1)
        width = int(counts.max()) if len(counts) else 0
        if width == mask.shape[1]:
            return
        gather = torch.zeros((mask.shape[0], width), dtype=torch.long, device=mask.device)
        new_mask = torch.zeros_like(gather)
        for row in range(mask.shape[0]):
            real = torch.nonzero(mask[row]).flatten()
            if len(real):
                gather[row, width - len(real) :] = real
                new_mask[row, width - len(real) :] = 1
        for layer in self._layers():
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            b, h, _, d = layer.keys.shape
            index = gather[:, None, :, None].expand(b, h, width, d)
            layer.keys = torch.gather(layer.keys, 2, index)
            layer.values = torch.gather(layer.values, 2, index.expand(b, h, width, layer.values.shape[-1]))
        self._mask = new_mask

    # ---- Stepper ---------------------------------------------------------------------------------------
    def _forward(self, feeds: list[SlotFeed], positions: list[int]) -> list[np.ndarray]:
        new = [f.slot for f in feeds if f.slot not in self._rows]
        if new:
            self._add_rows(new)
        by_slot = {f.slot: (f, p) for f, p in zip(feeds, positions, strict=True)}
        rows, width = len(self._rows), max(len(f.token_ids) for f in feeds)
        device = self.engine.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((rows, width), pad, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        pos = torch.zeros((rows, width), dtype=torch.long)
        for row, slot in enumerate(self._rows):
            if slot not in by_slot:  # a busy slot with nothing to feed this step: an all-padding row
                pos[row, :] = self.tokens_in(slot)
                continue
            feed, start = by_slot[slot]
            n = len(feed.token_ids)
            ids[row, width - n :] = torch.tensor(feed.token_ids)
            mask[row, width - n :] = 1
            pos[row, : width - n] = start  # padding: any valid position, masked anyway
            pos[row, width - n :] = torch.arange(start, start + n)
        full_mask = torch.cat([self._mask, mask.to(device)], 1)
        if self._cache is None:
            self._cache = DynamicCache(config=self.engine.model.config)
        with torch.inference_mode():
            out = self.engine.model(
                input_ids=ids.to(device),
                attention_mask=full_mask,
                position_ids=pos.to(device),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_arg: self._cache},
            )
        self._mask = full_mask  # the cache object grew in place
        last = out.logits[:, -1, :].float().cpu().numpy()
        row_of = {slot: row for row, slot in enumerate(self._rows)}
        result = [last[row_of[f.slot]].copy() for f in feeds if f.wants_logits]
        cells = self._mask.numel()
        if (
            self._mask.shape[1] >= COMPACT_MIN_CELLS
            and cells
            and 1 - float(self._mask.sum()) / cells > COMPACT_WASTE
        ):
            self._compact()
        return result

    def _forget(self, slot: int) -> None:
        if slot not in self._rows:
            return
        keep = [i for i, s in enumerate(self._rows) if s != slot]
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        self._keep_rows(keep)
        cells = self._mask.numel()
        if cells and 1 - float(self._mask.sum()) / cells > COMPACT_WASTE:
            self._compact()

    def is_end_of_generation(self, token_id: int) -> bool:
        return token_id in self._eos

    def tokenize_prompt(self, text: str) -> list[int]:
        # added tokens (a chat template's markers) are parsed from the text by the tokenizer; BOS once, when
        # the model's tokenizer adds one
        return self.engine.with_bos(self.engine.tokenize(text))

    def detokenize(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(
            token_ids, skip_special_tokens=True
        )  # as llama.cpp's engine renders them

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or None

    @property
    def special_tokens(self) -> dict[str, str]:
        return {
            name: value
            for name in ("bos_token", "eos_token")
            if isinstance(value := getattr(self.tokenizer, name, None), str)
        }

    def describe(self) -> dict:
        return {
            **super().describe(),
            "kv_cache": "one DynamicCache, a row per slot, feeds right-aligned and padded, compacted when half holes",
            "step": "one forward pass per step over every busy slot",
        }

    def set_threads(self, threads: int) -> None:
        self.engine.threads = set_threads(threads)  # torch's thread count is process-wide

    def close(self) -> None:
        self._rows, self._cache, self._mask = [], None, None
