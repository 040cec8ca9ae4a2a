"""Export a model greenlm can load to GGUF for llama.cpp: float via gguf's writer, quantized via llama.cpp.

`export_model(ExportConfig(out=..., model=..., quant=...))` is what `greenlm export` runs;
`tensor_type_report(path)` says which tensor types a GGUF file really holds.
"""

from greenlm.export.gguf_writer import EXPORTABLE_ARCHITECTURES, FLOAT_TYPES, write_float_gguf
from greenlm.export.inspect import TensorTypeReport, tensor_type_report
from greenlm.export.quantize import quant_types, quantize_gguf
from greenlm.export.runner import ExportConfig, ExportResult, export_model

__all__ = [
    "EXPORTABLE_ARCHITECTURES",
    "FLOAT_TYPES",
    "ExportConfig",
    "ExportResult",
    "TensorTypeReport",
    "export_model",
    "quant_types",
    "quantize_gguf",
    "tensor_type_report",
    "write_float_gguf",
]
