"""The transformers engine: a plain PyTorch forward pass with a KV cache and a greedy decode loop.

We drive the loop ourselves instead of `generate()` so that prefill and decode are separate, measurable calls.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache

from greenlm.engines.base import DecodeResult, Engine, PrefillResult
from greenlm.engines.bos import model_bos_token_id, tokenizer_bos_token_id
from greenlm.errors import GreenlmError
from greenlm.models.loader import LoadedModel, load_model
from greenlm.models.spec import ModelSpec


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "gpu":  # llama.cpp's word for an offloaded run, which check_device accepts too
        device = "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GreenlmError(f"device '{device}' asked for but torch sees no CUDA GPU: use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise GreenlmError(f"unknown device '{device}': use cpu, cuda, cuda:N or auto")
    return device


def cache_keyword(model) -> str:
    """The forward() argument that takes the KV cache: `cache` in transformers 5.x (where `past_key_values` is
    deprecated, to be removed in 5.40), `past_key_values` before. The cache object is updated in place either
    way, so callers keep their own reference instead of reading it back from the output."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def set_threads(threads: int | None) -> int:
    if threads is not None:
        if threads < 1:
            raise GreenlmError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def cpu_only_modules(model) -> list[str]:
    """Module types in `model` whose kernels run on the CPU only (greenlm's quantized linears)."""
    return sorted({type(m).__name__ for m in model.modules() if getattr(m, "cpu_only", False)})


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        threads: int | None = None,
        device_choice: str = "",
        bos_token_id: int | None | str = "tokenizer",
    ):
        """`bos_token_id`: the model's BOS convention (see engines/bos.py); by default its tokenizer's."""
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.model_name = loaded.spec.name
        self.device = str(next(self.model.parameters()).device)
        self.device_choice = device_choice or self.device
        self.threads = set_threads(threads)
        self._cache_kw = cache_keyword(self.model)
        self._bos = tokenizer_bos_token_id(self.tokenizer) if bos_token_id == "tokenizer" else bos_token_id

    @classmethod
    def load(
        cls, spec: ModelSpec, *, threads: int | None = None, device: str = "cpu", dtype: str = "float32"
    ) -> TransformersEngine:
        """Load `spec` on `device`. auto: CUDA when torch sees it, unless the model holds CPU-only kernels."""
        target = resolve_device(device)
        loaded = load_model(spec, dtype=dtype, device="cpu")
        choice = target if device != "auto" else f"auto: {target}"
        if target != "cpu":
            cpu_only = cpu_only_modules(loaded.model)
            if cpu_only and device != "auto":
                raise GreenlmError(
                    f"{spec.name} holds quantized kernels that run on the CPU only ({', '.join(cpu_only)}): "
                    "use --device cpu (or auto)"
                )
            if cpu_only:
                target, choice = "cpu", f"auto: cpu ({', '.join(cpu_only)} kernels run on the CPU only)"
            else:
                loaded.model.to(target)
        return cls(loaded, threads=threads, device_choice=choice, bos_token_id=model_bos_token_id(spec))

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_tokens(self, messages: list[dict]) -> list[int]:
        """Rendered by the tokenizer's own chat template (apply_chat_template), ready for the reply."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise GreenlmError(f"{self.model_name}'s tokenizer has no chat template: give plain prompts")
        try:
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        except Exception as exc:  # a template that rejects these roles or fields: say which
            raise GreenlmError(
                f"{self.model_name}'s chat template cannot render these messages: {exc}"
            ) from None
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        # BOS once when the tokenizer adds one, whether or not the template writes it (llama.cpp alike)
        return self.with_bos([int(t) for t in ids])

    def detokenize(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def _left_pad(self, prompts: list[list[int]]):
        if not prompts or any(not p for p in prompts):
            raise GreenlmError("every prompt needs at least one token")
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def prefill(self, prompts: list[list[int]]) -> PrefillResult:
        ids, mask = self._left_pad(prompts)
        # Left padding shifts real tokens right; positions must count real tokens only.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        with torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: cache},
            )
        next_ids = out.logits[:, -1, :].argmax(-1)
        state = {"cache": cache, "mask": mask, "last_pos": positions[:, -1], "next": next_ids}
        return PrefillResult(next_ids.tolist(), int(mask.sum()), state)

    def decode(self, prefill: PrefillResult, new_tokens: int) -> DecodeResult:
        state: dict[str, Any] = prefill.state
        cache, mask, pos, nxt = state["cache"], state["mask"], state["last_pos"], state["next"]
        generated = [nxt]
        ones = torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=mask.device)
        with torch.inference_mode():
            for _ in range(new_tokens):
                mask = torch.cat([mask, ones], dim=1)
                pos = pos + 1
                out = self.model(
                    input_ids=nxt[:, None],
                    attention_mask=mask,
                    position_ids=pos[:, None],
                    use_cache=True,
                    **{self._cache_kw: cache},
                )
                nxt = out.logits[:, -1, :].argmax(-1)
                generated.append(nxt)
        tokens = torch.stack(generated, dim=1).tolist()
        return DecodeResult(tokens, new_tokens * len(tokens), new_tokens)

    def logits(self, token_ids: list[list[int]]):
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            return self.model(input_ids=ids, use_cache=False).logits.float()

    def describe(self) -> dict:
        info = super().describe()
        info["dtype"] = str(self.model.dtype).removeprefix("torch.")
        info["device_choice"] = self.device_choice
        info["bos_token_id"] = self._bos
        info["load_s"] = round(self.loaded.load_s, 3)
        info["load_source"] = self.loaded.load_source
        return info

    def close(self) -> None:
        self.model = None
        self.loaded = None
