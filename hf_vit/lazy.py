"""Lazy package namespaces (PEP 562): a package lists which submodule holds each public name, and a name's
submodule is imported on first use, so importing the package itself stays cheap (no torch, no transformers)."""

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(
    package: str, namespace: dict[str, Any], exports: dict[str, list[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The module-level `__getattr__` and `__dir__` of `package` (whose globals are `namespace`) for `exports`
    (submodule -> names), and the exported names for its `__all__`; a name, once imported, is kept in the
    namespace."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module_of[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *module_of})

    return __getattr__, __dir__, list(module_of)
