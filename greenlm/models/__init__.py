"""Model specs: resolve a name or path, load it through transformers, cache dequantized built-ins, variants."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "BUILTIN_MODELS": "greenlm.models.spec",
        "DEFAULT_MODEL": "greenlm.models.spec",
        "LoadedModel": "greenlm.models.loader",
        "ModelSpec": "greenlm.models.spec",
        "load_model": "greenlm.models.loader",
        "resolve_model": "greenlm.models.spec",
    },
)
