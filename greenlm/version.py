"""The package version, in a module of its own so the store can stamp rows without importing the package face."""

__version__ = "0.1.0"
