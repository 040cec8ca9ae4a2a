"""Everything that touches llama.cpp or writes GGUF: the runtime (optional import, log capture, interrupts,
status), the GGUF writer and vocabulary, llama.cpp's quantizer, file inspection, the importance matrix, the
float-GGUF cache and round-trip checks. `engines.llamacpp_engine` and `export` build on it; it imports neither."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "EXPORTABLE_ARCHITECTURES": "greenlm.llamacpp.gguf_writer",
        "FLOAT_TYPES": "greenlm.llamacpp.gguf_writer",
        "TensorTypeReport": "greenlm.llamacpp.inspect",
        "cached_float_gguf": "greenlm.llamacpp.cache",
        "import_llama_cpp": "greenlm.llamacpp.runtime",
        "llama_cpp_status": "greenlm.llamacpp.runtime",
        "quant_types": "greenlm.llamacpp.quantize",
        "quantize_gguf": "greenlm.llamacpp.quantize",
        "tensor_type_report": "greenlm.llamacpp.inspect",
        "write_float_gguf": "greenlm.llamacpp.gguf_writer",
        "write_model_gguf": "greenlm.llamacpp.gguf_writer",
    },
)
