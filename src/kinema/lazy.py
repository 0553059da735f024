"""Lazy re-exports: a package names its public objects without importing their modules.

`import kinema` and the CLI start fast because torch, models and codecs are imported
only when one of their names is first used.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `package.exports[name]` on first use of `name`.

    A module given with a leading dot is relative to `package`; otherwise it is absolute.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        return getattr(importlib.import_module(module if not module.startswith(".") else package + module), name)

    return __getattr__
