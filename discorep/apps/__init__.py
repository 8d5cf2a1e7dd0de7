"""Applications built on the library: the `demo` command, `study`, and the demo-data generators.

Nothing in the library imports from here (the import-linter contract in pyproject.toml says so).
"""
