"""Every public name has an example in its docstring, and every example runs and prints what it
says. The public names: ``__all__`` of ``unshared`` and of its public modules below."""
import doctest
import importlib

import pytest

MODULES = ("unshared", "unshared.functional", "unshared.interop", "unshared.models", "unshared.sparse", "unshared.topography",
           "unshared.backends")
PUBLIC = sorted({(f"{module}.{name}", obj) for module in MODULES for name in importlib.import_module(module).__all__
                 for obj in [getattr(importlib.import_module(module), name)] if callable(obj)},
                key=lambda item: item[0])


def test_the_public_modules_are_those_unshared_names():
    import unshared
    assert {f"unshared.{name}" for name in unshared.__all__ if name != "__version__"
            and type(getattr(unshared, name)).__name__ == "module"} | {"unshared", "unshared.backends"} == set(MODULES)
    assert {name.rpartition(".")[0] for name, _ in PUBLIC} == set(MODULES)  # each module has public callables


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_docstring_examples_run(name, obj):
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(obj, name, globs={})
    assert sum(len(test.examples) for test in tests) > 0, f"{name}: no example in its docstring"
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{name}: {runner.failures} failing example(s)"
