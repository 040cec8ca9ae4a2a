"""Compression methods: each module registers a config dataclass and the function that applies it; a recipe is
an ordered list of them; `compress(CompressConfig(...))` applies one to a model and saves the variant."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "AWQ": "greenlm.compress.quant_awq",
        "GPTQ": "greenlm.compress.quant_gptq",
        "RTN": "greenlm.compress.quant_rtn",
        "CompressConfig": "greenlm.compress.config",
        "CompressContext": "greenlm.compress.base",
        "CompressResult": "greenlm.compress.pipeline",
        "Recipe": "greenlm.compress.recipe",
        "StepConfig": "greenlm.compress.base",
        "StepReport": "greenlm.compress.base",
        "apply_step": "greenlm.compress.methods",
        "compress": "greenlm.compress.pipeline",
        "config_class": "greenlm.compress.methods",
        "load_recipe": "greenlm.compress.recipe",
        "method_names": "greenlm.compress.methods",
        "register": "greenlm.compress.base",
    },
    call="greenlm.compress.pipeline:compress",
)
