"""import_hook.when_imported: the callback runs once, right after the module executes.

Each test imports modules it writes itself under a fresh name, so the
process-wide import system is left as it was (finders it added are removed).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import uuid

import pytest

from vllm_gemma4_router.integration import import_hook
from vllm_gemma4_router.integration.import_hook import when_imported


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """A factory of importable modules with fresh names; everything undone afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    finders_before = list(sys.meta_path)
    created: list[str] = []

    def make(source: str, package: bool = False) -> str:
        name = f"hooked_{uuid.uuid4().hex[:12]}"
        if package:
            (tmp_path / name).mkdir()
            (tmp_path / name / "__init__.py").write_text(source)
        else:
            (tmp_path / f"{name}.py").write_text(source)
        created.append(name)
        return name

    importlib.invalidate_caches()
    yield make
    sys.meta_path[:] = finders_before
    for name in list(sys.modules):
        if name.split(".")[0] in created:
            del sys.modules[name]
    import_hook._watched.difference_update(
        {name for name in import_hook._watched if name.split(".")[0] in created}
    )


def test_callback_runs_after_the_module_executed_and_only_once(modules):
    name = modules("VALUE = 41\nVALUE += 1\n")
    seen = []
    when_imported(name, lambda module: seen.append((module.__name__, module.VALUE)))
    assert seen == [] and name not in sys.modules  # nothing imported on our behalf
    module = importlib.import_module(name)
    assert seen == [(name, 42)] and module.VALUE == 42
    importlib.import_module(name)  # already imported: nothing runs again
    assert seen == [(name, 42)]


def test_an_already_imported_module_is_called_back_at_once(modules):
    name = modules("VALUE = 7\n")
    module = importlib.import_module(name)
    seen = []
    when_imported(name, seen.append)
    assert seen == [module]


def test_watching_a_name_twice_is_a_no_op(modules):
    name = modules("VALUE = 1\n")
    first, second = [], []
    when_imported(name, first.append)
    finders = len(sys.meta_path)
    when_imported(name, second.append)
    assert len(sys.meta_path) == finders
    importlib.import_module(name)
    assert len(first) == 1 and second == []


def test_the_hooked_module_keeps_its_loader_services(modules):
    source = "def answer():\n    return 42\n"
    name = modules(source)
    when_imported(name, lambda module: None)
    module = importlib.import_module(name)
    # inspect and tracebacks read the source through the (wrapped) loader
    assert inspect.getsource(module.answer) == source
    assert module.__spec__.loader.get_filename(name).endswith(f"{name}.py")


def test_a_submodule_of_a_package_can_be_watched(modules, tmp_path):
    package = modules("", package=True)
    (tmp_path / package / "models.py").write_text("BUILT = True\n")
    seen = []
    when_imported(f"{package}.models", lambda module: seen.append(module.BUILT))
    importlib.import_module(package)
    assert seen == []
    importlib.import_module(f"{package}.models")
    assert seen == [True]


def test_other_imports_and_missing_modules_are_untouched(modules):
    watched = modules("X = 1\n")
    other = modules("Y = 2\n")
    seen = []
    when_imported(watched, seen.append)
    assert importlib.import_module(other).Y == 2
    assert seen == []
    missing = f"absent_{uuid.uuid4().hex[:12]}"
    when_imported(missing, seen.append)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(missing)
    assert seen == []


def test_an_error_in_the_module_propagates_and_skips_the_callback(modules):
    name = modules("raise RuntimeError('broken module')\n")
    seen = []
    when_imported(name, seen.append)
    with pytest.raises(RuntimeError, match="broken module"):
        importlib.import_module(name)
    assert seen == []
