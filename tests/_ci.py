"""Skips that must not hide in CI: with ``CI=true`` (``.ci/run``) a missing
test dependency or machine feature fails the test instead of skipping it.
CI runs on the same kind of machine as development, where all of these exist;
a skip that CI cannot avoid says why in its reason instead of using these."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from tests._broker import in_ci


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it under ``CI=true``."""
    if in_ci():
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, why: str) -> ModuleType:
    """``pytest.importorskip`` that fails under ``CI=true``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_or_fail(f"{name} is not installed ({why}): {exc}")
        raise  # not reached
