"""greenlm: measure, compress, optimize and serve language models for less energy and carbon."""

__version__ = "0.1.0"
