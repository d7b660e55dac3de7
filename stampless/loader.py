"""Load the user's robots/ and tasks/ modules by file path, never through sys.path.

A project's folders are named after roles (robots/, tasks/, selectors/), and a package
named ``selectors`` would hide the standard library module asyncio needs; so project
code is never importable by folder name. Each file is loaded under a private module
name derived from its absolute path, once per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from stampless.errors import ConfigError


def load_module(path: Path) -> ModuleType:
    """Import the Python file at ``path`` (cached per absolute path)."""
    path = Path(path).resolve()
    digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:12]
    name = f"stampless_project_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; check the path in robot.toml.")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be loaded as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(
            f"{path}: failed to load ({exc.__class__.__name__}: {exc}); fix the module."
        ) from exc
    return module


def load_attribute(path: Path, attribute: str) -> Any:
    """``getattr(load_module(path), attribute)`` with an error that names file and name."""
    module = load_module(path)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(
            f"{path}: defines no {attribute!r}; see README, 'Writing a robot'."
        ) from None
