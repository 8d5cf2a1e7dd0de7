"""Pretraining methods: each one file, a short composition of the shared parts, found by name
(`methods.registry`)."""

from __future__ import annotations

from discorep.methods.registry import build_method, register_method, registered_methods  # noqa: F401
