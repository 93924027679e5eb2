"""Optional dependencies: import one, or say in one line which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from resnet50.core.errors import BackendUnavailableError


def require(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or :class:`BackendUnavailableError`: "``what`` needs ``module``:
    pip install 'resnet50[``extra``]'"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.partition(".")[0]
        raise BackendUnavailableError(f"{what} needs {package}: pip install 'resnet50[{extra}]'") from None
