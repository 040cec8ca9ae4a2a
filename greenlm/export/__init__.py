"""The export verb: a model greenlm can load, written as one GGUF file for llama.cpp (float via gguf's writer,
quantized via llama.cpp; see `greenlm.llamacpp`)."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "ExportConfig": "greenlm.export.config",
        "ExportResult": "greenlm.export.runner",
        "export_model": "greenlm.export.runner",
    },
    call="greenlm.export.runner:export_model",
)
