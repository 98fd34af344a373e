"""Importing the user's own code by name: `MODULE` or `MODULE:ATTRIBUTE`.

`legato worker --import mytasks:app` names the user's tasks this way, `legato backtest
--strategy mystrategies:Breakout` the user's strategy, and a `[[desk.strategies]]` table its
`code`. Like uvicorn, the working directory is put first on `sys.path`, so a module next to
where the command runs is importable without installing it.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from legato.kernel.errors import ValidationError

__all__ = ["import_spec"]


def import_spec(option: str, spec: str, expected: str) -> tuple[ModuleType, str]:
    """Import the module of `spec` (MODULE or MODULE:ATTRIBUTE); return it and the attribute.

    The working directory is searched first. ValidationError names `option` and says
    `expected` for a spec without a module, and why for a module that cannot be imported.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise ValidationError(option, spec, expected)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name), attribute
    except ImportError as error:
        raise ValidationError(
            option,
            spec,
            f"an importable module ({type(error).__name__}: {error}; the working directory "
            "and PYTHONPATH are searched)",
        ) from error
