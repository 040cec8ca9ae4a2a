"""The llama.cpp engine: a GGUF model run through llama.cpp's C API (the llama-cpp-python bindings).

We drive llama.cpp's batch API ourselves rather than `Llama.generate`, so prefill (every prompt token in one
`llama_decode` per chunk) and decode (one `llama_decode` per step) are separate, measurable calls, and a batch
of prompts runs as real parallel sequences (one sequence id each, one KV cache) instead of one after another.
A Hugging Face directory or variant is first exported once to a float GGUF in the cache (announced).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from greenlm.engines.base import DecodeResult, Engine, PrefillResult
from greenlm.engines.bos import model_bos_token_id
from greenlm.engines.chat import render_chat
from greenlm.engines.speculative import (
    SPECULATIVE_BATCH_MESSAGE,
    Drafter,
    SpeculativeConfig,
    make_drafter,
)
from greenlm.errors import GreenlmError
from greenlm.llamacpp.cache import cached_float_gguf
from greenlm.llamacpp.inspect import file_quant_type, tensor_type_counts
from greenlm.llamacpp.runtime import captured_log, import_llama_cpp, new_context, raise_pending_interrupt
from greenlm.models.spec import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_TOKENS = 2048  # KV cache per sequence (capped by the model's trained context)
BATCH_TOKENS = 512  # tokens per llama_decode call; longer inputs go in chunks
DTYPE_TO_GGUF = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
# llama.cpp's "extra buffer types" repack weights for AMX / interleaved kernels at load. With
# llama-cpp-python 0.3.36 on this project's Xeon VM the AMX path segfaults in llama_decode on every quantized
# file (llama.cpp issue #20824 reports the same crash), so they are off unless this variable is 1.
EXTRA_BUFFERS_ENV = "GREENLM_LLAMACPP_EXTRA_BUFFERS"


def default_threads() -> int:
    """The cores this process may run on (llama.cpp's own default counts the machine's, not ours)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _gguf_path(spec: ModelSpec, dtype: str) -> tuple[Path, str]:
    """The GGUF file to load and how we got it: the spec's own file, or a cached float export of it."""
    if spec.is_gguf:
        return spec.path, "gguf"
    outtype = DTYPE_TO_GGUF.get(dtype)
    if outtype is None:
        raise GreenlmError(f"unknown dtype '{dtype}': use float32, bfloat16 or float16")
    path, fresh = cached_float_gguf(spec, outtype)
    return path, f"exported-{outtype}-gguf" if fresh else f"cache-{outtype}-gguf"


class LlamaCppEngine(Engine):
    name = "llamacpp"

    def __init__(
        self,
        path: Path,
        *,
        model_name: str,
        threads: int | None = None,
        device: str = "cpu",
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        load_source: str = "gguf",
    ):
        self.lib = lib = import_llama_cpp()
        if threads is not None and threads < 1:
            raise GreenlmError(f"--threads must be at least 1, got {threads}")
        if context_tokens < 2:
            raise GreenlmError(f"the llama.cpp context must hold at least 2 tokens, got {context_tokens}")
        self.path = Path(path)
        self.model_name = model_name
        self.threads = threads or default_threads()
        self.device = self._resolve_device(device)
        self.load_source = load_source
        self.extra_buffers = os.environ.get(EXTRA_BUFFERS_ENV, "0") == "1"
        self._model = self._ctx = self._batch = None
        self._n_seq = 0
        self._ctx_generation = 0
        self.speculative: SpeculativeConfig | None = None
        self._drafter: Drafter | None = None
        self._drafted_total = self._accepted_total = 0  # since load, warm-up included

        start = time.perf_counter()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if self.device != "cpu" else 0
        params.use_extra_bufts = self.extra_buffers
        with captured_log() as captured:
            model = lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not model:
            raise GreenlmError(
                f"llama.cpp cannot load {self.path}: {captured.reason()} (is the file complete and a supported "
                "architecture?)"
            )
        self._model = model
        self._vocab = lib.llama_model_get_vocab(model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(model))
        self.context_tokens = (
            min(context_tokens, self.n_ctx_train) if self.n_ctx_train > 0 else context_tokens
        )
        self.load_s = time.perf_counter() - start
        # llama.cpp's own rule (tokenizer.ggml.add_bos_token, else its vocabulary type's default)
        self._bos = (
            int(lib.llama_vocab_bos(self._vocab)) if lib.llama_vocab_get_add_bos(self._vocab) else None
        )
        self._ensure_context(1)

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        *,
        threads: int | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        speculative: SpeculativeConfig | None = None,
    ) -> LlamaCppEngine:
        """Load `spec`. A GGUF runs as it is (`dtype` does not apply); a Hugging Face directory or variant is
        exported once to a float GGUF of `dtype` in the cache. With `speculative`, decode drafts and verifies
        (see `set_speculative`); its draft model, if any, loads here too and counts in `load_s`."""
        import_llama_cpp()  # a missing extra is the first thing to report, before any export
        start = time.perf_counter()
        path, source = _gguf_path(spec, dtype)
        engine = cls(
            path,
            model_name=spec.name,
            threads=threads,
            device=device,
            context_tokens=context_tokens,
            load_source=source,
        )
        try:
            engine.set_speculative(speculative)
            # One convention per model for every engine (a Hugging Face directory's tokenizer decides).
            engine._bos = model_bos_token_id(spec)
        except BaseException:
            engine.close()
            raise
        engine.load_s = time.perf_counter() - start
        return engine

    def set_speculative(self, config: SpeculativeConfig | None) -> None:
        """Decode speculatively with `config` from now on (None: plain greedy decoding). The output is the
        same either way; only the work per token changes."""
        if config is not None and not isinstance(config, SpeculativeConfig):
            raise GreenlmError(
                f"speculative must be a SpeculativeConfig or None, got {type(config).__name__}"
            )
        drafter = make_drafter(config, self) if config is not None else None
        if self._drafter is not None:
            self._drafter.close()
        self.speculative, self._drafter = config, drafter
        self._drafted_total = self._accepted_total = 0

    def _resolve_device(self, device: str) -> str:
        gpu = bool(self.lib.llama_supports_gpu_offload())
        if device == "cpu":
            return "cpu"
        if device == "auto":
            return "gpu" if gpu else "cpu"
        if device.startswith("cuda") or device == "gpu":
            if not gpu:
                raise GreenlmError(
                    f"device '{device}' asked for but this llama-cpp-python build has no GPU offload: use "
                    "--device cpu, or rebuild llama-cpp-python with CUDA (CMAKE_ARGS=-DGGML_CUDA=on)"
                )
            return "gpu"
        raise GreenlmError(f"unknown device '{device}': use cpu, cuda, cuda:N or auto")

    @property
    def cache_generation(self) -> int:
        """Changes whenever the KV cache is replaced or emptied: state kept against the old one is stale."""
        return self._ctx_generation

    # ---- context and batches ---------------------------------------------------------------------------
    def _ensure_context(self, n_seq: int) -> None:
        """A context whose KV cache holds `n_seq` sequences of `context_tokens` each (rebuilt only to grow)."""
        if self._ctx is not None and self._n_seq >= n_seq:
            return
        lib = self.lib
        self._free_context()
        params = lib.llama_context_default_params()
        params.n_ctx = self.context_tokens * n_seq
        params.n_batch = BATCH_TOKENS
        params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = n_seq
        params.n_outputs_max = 0  # = n_batch: evaluation wants a logit row for every token
        params.n_outputs_max_per_seq = 0
        params.n_threads = self.threads
        params.n_threads_batch = self.threads
        params.kv_unified = True  # one cache shared by the sequences of a batch
        params.no_perf = True
        self._ctx = new_context(
            lib, self._model, params, f"a context of {n_seq} x {self.context_tokens} tokens"
        )
        self._batch = lib.llama_batch_init(BATCH_TOKENS, 0, n_seq)
        self._n_seq = n_seq
        self._ctx_generation += 1

    def _free_context(self) -> None:
        if self._batch is not None:
            self.lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            self.lib.llama_free(self._ctx)
            self._ctx = None
            self._n_seq = 0

    def _clear_cache(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self._ctx), True)

    def remove_from(self, seq: int, position: int) -> None:
        """Drop sequence `seq`'s cached tokens at `position` and after (rejected drafts)."""
        if not self.lib.llama_memory_seq_rm(self.lib.llama_get_memory(self._ctx), seq, position, -1):
            raise GreenlmError(
                f"llama.cpp cannot remove part of a sequence from {self.model_name}'s cache (a recurrent "
                "architecture?): speculative decoding does not apply to this model; drop --speculative"
            )

    def decode_entries(self, entries: list[tuple[int, int, int, bool]], on_outputs) -> None:
        """Decode (token, position, sequence, wants logits) entries in chunks of BATCH_TOKENS; after each chunk
        call `on_outputs(chunk, logits)` with that chunk's [outputs, vocab] logits (a view: copy to keep)."""
        lib, batch = self.lib, self._batch
        for first in range(0, len(entries), BATCH_TOKENS):
            chunk = entries[first : first + BATCH_TOKENS]
            for i, (token, pos, seq, wants) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = wants
            batch.n_tokens = len(chunk)
            status = lib.llama_decode(self._ctx, batch)
            raise_pending_interrupt()  # a Ctrl-C llama.cpp's log callback caught
            if status != 0:
                raise GreenlmError(
                    f"llama.cpp could not decode a batch of {len(chunk)} tokens (status {status}): the KV cache "
                    f"of {self._n_seq} x {self.context_tokens} tokens is full or the input is invalid"
                )
            outputs = sum(1 for e in chunk if e[3])
            if outputs:
                logits = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx), shape=(outputs, self.n_vocab))
                on_outputs(chunk, logits)

    def _check_ids(self, token_ids: list[int]) -> None:
        bad = [t for t in token_ids if not 0 <= t < self.n_vocab]
        if bad:
            raise GreenlmError(
                f"token id {bad[0]} is outside {self.model_name}'s vocabulary of {self.n_vocab}: the token ids "
                "come from a different tokenizer"
            )

    # ---- Engine interface ------------------------------------------------------------------------------
    @property
    def max_context(self) -> int:
        return self.context_tokens

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    def tokenize(self, text: str, *, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 16
        for _ in range(2):
            buf = (self.lib.llama_token * size)()
            n = self.lib.llama_tokenize(self._vocab, data, len(data), buf, size, False, parse_special)
            if n >= 0:
                return list(buf[:n])
            size = -n
        raise GreenlmError("llama.cpp could not tokenize the text")

    @property
    def chat_template(self) -> str | None:
        """The GGUF's tokenizer.chat_template (Jinja), None when it has none."""
        template = self.lib.llama_model_chat_template(self._model, None)
        return template.decode("utf-8", errors="replace") if template else None

    @property
    def special_tokens(self) -> dict[str, str]:
        """bos_token / eos_token as text, as chat templates expect them."""
        special = {}
        for name, token in (
            ("bos_token", self.lib.llama_vocab_bos(self._vocab)),
            ("eos_token", self.lib.llama_vocab_eos(self._vocab)),
        ):
            if token >= 0:
                buf = ctypes.create_string_buffer(256)
                n = self.lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
                special[name] = buf.raw[: max(n, 0)].decode("utf-8", errors="replace")
        return special

    def chat_tokens(self, messages: list[dict]) -> list[int]:
        """Rendered from the GGUF's own chat template (Jinja, as transformers and `greenlm serve` render it, so
        both engines build the same prompt), tokenized with special tokens parsed, BOS once."""
        text = render_chat(self.chat_template, messages, self.special_tokens, self.model_name)
        return self.with_bos(self.tokenize(text, parse_special=True))

    def detokenize(self, token_ids: list[int]) -> str:
        self._check_ids(token_ids)
        tokens = (self.lib.llama_token * max(len(token_ids), 1))(*token_ids)
        size = 8 * len(token_ids) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = self.lib.llama_detokenize(self._vocab, tokens, len(token_ids), buf, size, False, False)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n
        raise GreenlmError("llama.cpp could not detokenize the tokens")

    def prefill(self, prompts: list[list[int]]) -> PrefillResult:
        if not prompts or any(not p for p in prompts):
            raise GreenlmError("every prompt needs at least one token")
        longest = max(len(p) for p in prompts)
        if longest >= self.context_tokens:
            raise GreenlmError(
                f"a prompt of {longest} tokens does not fit the llama.cpp context of {self.context_tokens} "
                "tokens per sequence: shorten it"
            )
        for p in prompts:
            self._check_ids(p)
        self._ensure_context(len(prompts))
        self._clear_cache()
        entries = [
            (tok, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, tok in enumerate(p)
        ]
        first: dict[int, int] = {}

        def take(chunk, logits):
            rows = [e[2] for e in chunk if e[3]]
            for row, seq in enumerate(rows):
                first[seq] = int(np.argmax(logits[row]))

        self.decode_entries(entries, take)
        next_ids = [first[s] for s in range(len(prompts))]
        state = {
            "generation": self._ctx_generation,
            "positions": [len(p) for p in prompts],
            "next": next_ids,
            "prompts": [list(p) for p in prompts],  # what a drafter looks up or feeds its own model
        }
        return PrefillResult(next_ids, sum(len(p) for p in prompts), state)

    def decode(self, prefill: PrefillResult, new_tokens: int) -> DecodeResult:
        state = prefill.state
        if state.get("generation") != self._ctx_generation:
            raise GreenlmError("this prefill's KV cache was replaced by a larger batch: prefill again")
        positions, nxt = list(state["positions"]), list(state["next"])
        if max(positions) + new_tokens > self.context_tokens:
            raise GreenlmError(
                f"{new_tokens} new tokens after a prompt of {max(positions)} exceed the llama.cpp context of "
                f"{self.context_tokens} tokens per sequence: ask for fewer"
            )
        if self._drafter is not None:
            if len(nxt) > 1:
                raise GreenlmError(SPECULATIVE_BATCH_MESSAGE)
            result = self._decode_speculative(state, positions[0], nxt[0], new_tokens)
            state["generation"] = -1
            return result
        generated = [[t] for t in nxt]
        n_seq = len(nxt)

        def take(_chunk, logits):
            for seq in range(n_seq):
                nxt[seq] = int(np.argmax(logits[seq]))
                generated[seq].append(nxt[seq])

        for _ in range(new_tokens):
            self.decode_entries([(nxt[s], positions[s], s, True) for s in range(n_seq)], take)
            positions = [p + 1 for p in positions]
        # The cache now holds the generated tokens too; a later decode of this prefill would be wrong.
        state["generation"] = -1
        return DecodeResult(generated, new_tokens * n_seq, new_tokens, target_passes=new_tokens)

    def _decode_speculative(self, state: dict, position: int, last: int, new_tokens: int) -> DecodeResult:
        """Greedy decoding, several tokens per target pass. Each pass feeds the last token and the drafted
        ones with logits at every position; the drafts equal to the target's argmax at the position before
        are kept up to the first miss, the target's argmax after the last kept one is the pass's own token,
        and the rejected positions leave the KV cache. Every kept token is the target's argmax given exactly
        the tokens before it, so the output is plain greedy decoding's.
        A draft model runs in this process, so the energy window around decode already includes it."""
        k = self.speculative.draft_tokens
        history = [*state["prompts"][0], last]
        generated = [last]
        drafted = accepted = passes = 0
        while len(generated) <= new_tokens:
            room = min(k, new_tokens - len(generated))  # the pass adds its own token after the drafts
            draft = self._drafter.propose(history, room)[:room] if room else []
            self._check_ids(draft)
            target: list[int] = []
            self.decode_entries(
                [(t, position + i, 0, True) for i, t in enumerate([history[-1], *draft])],
                lambda _chunk, logits, out=target: out.extend(np.argmax(logits, 1).tolist()),
            )
            passes += 1
            kept = 0
            while kept < len(draft) and draft[kept] == target[kept]:
                kept += 1
            if kept < len(draft):  # the positions after the last kept draft hold rejected tokens
                # llama.cpp refills the freed cells next, so position p stays in cell p as in plain decoding
                self.remove_from(0, position + kept + 1)
            new = [*draft[:kept], target[kept]]
            position += kept + 1
            generated += new
            history += new
            drafted += len(draft)
            accepted += kept
        self._drafted_total += drafted
        self._accepted_total += accepted
        return DecodeResult(
            [generated],
            new_tokens,
            new_tokens,
            drafted_tokens=drafted,
            accepted_tokens=accepted,
            target_passes=passes,
        )

    def logits(self, token_ids: list[list[int]]):
        """[batch, seq, vocab] float32 logits; windows run one after another, each from an empty cache."""
        if not token_ids or len({len(t) for t in token_ids}) != 1 or not token_ids[0]:
            raise GreenlmError("logits needs one or more non-empty token windows of equal length")
        width = len(token_ids[0])
        if width > self.context_tokens:
            raise GreenlmError(
                f"a window of {width} tokens exceeds the llama.cpp context of {self.context_tokens} tokens"
            )
        out = torch.empty((len(token_ids), width, self.n_vocab), dtype=torch.float32)
        for b, ids in enumerate(token_ids):
            self._check_ids(ids)
            self._clear_cache()
            filled = 0

            def take(_chunk, logits, b=b):
                nonlocal filled
                out[b, filled : filled + logits.shape[0]] = torch.from_numpy(logits)
                filled += logits.shape[0]

            self.decode_entries([(tok, pos, 0, True) for pos, tok in enumerate(ids)], take)
        self._ctx_generation += 1  # the cache no longer holds any prefill's state
        return out

    def sync(self) -> None:
        if self._ctx is not None:
            self.lib.llama_synchronize(self._ctx)

    # ---- what ran --------------------------------------------------------------------------------------
    def describe(self) -> dict:
        info = super().describe()
        buf = ctypes.create_string_buffer(256)
        self.lib.llama_model_desc(self._model, buf, len(buf))
        info.update(
            {
                "gguf": str(self.path),
                "quant_type": file_quant_type(self.path),
                "file_mb": round(self.path.stat().st_size / 1e6, 2),
                "tensor_types": tensor_type_counts(self.path),
                "llama_model": buf.value.decode(errors="replace"),
                "llama_cpp_python": getattr(self.lib, "__version__", "unknown"),
                "context_tokens_per_sequence": self.context_tokens,
                "kv_cache": "f16",
                "extra_buffers": self.extra_buffers,  # AMX/repacked weights (see EXTRA_BUFFERS_ENV)
                "batching": "parallel sequences in one llama_decode per step (llama.cpp batch API, unified KV cache)",
                "logits": "evaluation windows one after another, all positions' logits",
                "load_s": round(self.load_s, 3),
                "load_source": self.load_source,
                "decoding": "greedy" if self.speculative is None else "speculative greedy (same output)",
                "bos_token_id": self._bos,
                "gpu_layers": "all" if self.device != "cpu" else 0,
            }
        )
        if self.speculative is not None:
            info["speculative"] = {
                **self.speculative_summary(),
                "drafted_tokens_since_load": self._drafted_total,
                "accepted_tokens_since_load": self._accepted_total,
                "acceptance_rate_since_load": (
                    self._accepted_total / self._drafted_total if self._drafted_total else None
                ),
            }
        return info

    def speculative_summary(self) -> dict | None:
        """The speculative setting and the draft model it loaded (None without speculative decoding)."""
        if self.speculative is None:
            return None
        return {**self.speculative.to_dict(), **self._drafter.describe()}

    def close(self) -> None:
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        if getattr(self, "_drafter", None) is not None:
            self._drafter.close()
            self._drafter = None
        self._free_context()
        if self._model is not None:
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass
