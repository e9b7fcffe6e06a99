"""Every example in the public docstrings runs and prints what it says."""
import doctest

import pytest

import unshared
import unshared.functional as UF

PUBLIC = sorted({(name, obj) for module in (unshared, UF) for name in getattr(module, "__all__", [])
                 for obj in [getattr(module, name)] if callable(obj) and getattr(obj, "__doc__", None)},
                key=lambda item: item[0])


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_docstring_examples_run(name, obj):
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(obj, name, globs={}):
        runner.run(test)
    assert runner.failures == 0, f"{name}: {runner.failures} failing example(s)"
