"""Run a callback right after a given module is imported (or now, if it already is).

The plugin must be cheap to register (vLLM calls it in every process) but the
Gemma4 model module is heavy and may never be needed, so the plugin waits for
vLLM to import it instead of importing it itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Callable
from types import ModuleType

_Callback = Callable[[ModuleType], None]
_lock = threading.Lock()
_watched: set[str] = set()


class _CallbackLoader(importlib.abc.Loader):
    """Delegates to the real loader, then calls back with the executed module."""

    def __init__(self, loader: importlib.abc.Loader, callback: _Callback) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._callback(module)

    def __getattr__(self, name: str):
        # get_source, get_filename, ... keep working for inspect and tracebacks.
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self, module_name: str, callback: _Callback) -> None:
        self._module_name = module_name
        self._callback = callback
        self._searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self._module_name or self._searching:
            return None
        self._searching = True  # let the other finders answer the nested look-up
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _CallbackLoader(spec.loader, self._callback)
        return spec


def when_imported(module_name: str, callback: _Callback) -> None:
    """Call ``callback(module)`` once ``module_name`` is imported; now if it already is.

    Watching the same name twice is a no-op, so callers may call this repeatedly.
    """
    with _lock:
        module = sys.modules.get(module_name)
        if module is None:
            if module_name in _watched:
                return
            _watched.add(module_name)
            sys.meta_path.insert(0, _PostImportFinder(module_name, callback))
            return
    callback(module)
