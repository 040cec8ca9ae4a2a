"""Model specs: resolve a name or path, load it through transformers, cache dequantized built-ins."""

from greenlm.models.loader import LoadedModel, load_model
from greenlm.models.spec import BUILTIN_MODELS, DEFAULT_MODEL, ModelSpec, resolve_model

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "LoadedModel", "ModelSpec", "load_model", "resolve_model"]
