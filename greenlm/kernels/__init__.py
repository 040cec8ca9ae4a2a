"""Quantized execution: the grid (codes, scales, zero points), nn.Linear replacements that run low-bit PyTorch
kernels, their timing against float32, and the registry that rebuilds them when a variant loads."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "KERNELS": "greenlm.kernels.linear",
        "QUANTIZED_MODULES": "greenlm.kernels.base",
        "QuantLinear": "greenlm.kernels.linear",
        "QuantizedModule": "greenlm.kernels.base",
        "QuantizedWeight": "greenlm.kernels.quant_grid",
        "available_kernels": "greenlm.kernels.linear",
        "register_module": "greenlm.kernels.base",
        "rtn": "greenlm.kernels.quant_grid",
        "time_kernels": "greenlm.kernels.timing",
    },
)
