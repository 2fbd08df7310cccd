"""The package version (a module of its own, so any part can read it without importing
the package root, which imports the database)."""

__version__ = "0.1.0"
