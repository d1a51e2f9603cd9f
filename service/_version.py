"""The package's version, in a module of its own so that any part can read it without
importing the package root's re-exports (pyproject.toml carries the same number)."""

__version__ = "0.1.0"
