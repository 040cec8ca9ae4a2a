"""The export verb: a model greenlm can load, written as one GGUF file for llama.cpp: float via gguf's writer,
quantized via llama.cpp, a variant's own quantization codes as GGUF blocks (codes.py), or mixed per-tensor types
chosen for energy (mixed.py); see `greenlm.llamacpp` for the file format side."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "ExportConfig": "greenlm.export.config",
        "ExportResult": "greenlm.export.runner",
        "export_model": "greenlm.export.runner",
        "gguf_for_recipe": "greenlm.export.fastpath",
        "variant_for": "greenlm.export.fastpath",
    },
    call="greenlm.export.runner:export_model",
)
