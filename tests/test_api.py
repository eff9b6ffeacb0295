"""House rules for the public API: docstrings, keyword-only options, __all__."""

from __future__ import annotations

import importlib
import inspect

import pytest

PUBLIC_MODULES = [
    "jad.sparse",
    "jad.backbones",
    "jad.data",
    "jad.ops",
    "jad.metrics",
    "jad.viz",
    "jad.methods",
    "jad.pipeline",
    "jad.evaluation",
    "jad.neighbors",
    "jad.coreset",
    "jad.io",
]


def public_callables():
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.isfunction(obj):
                yield f"{name}.{attr}", obj


@pytest.mark.parametrize("name, fn", list(public_callables()))
def test_public_function_docstring_and_signature(name, fn):
    doc = inspect.getdoc(fn) or ""
    params = list(inspect.signature(fn).parameters.values())
    assert "Returns:" in doc and ("Args:" in doc or not params), name
    # options with defaults are keyword-only
    for p in params:
        if p.default is not inspect.Parameter.empty:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: {p.name}"
    # randomness comes from an explicit `key`, first argument of kernels
    if any(p.name == "key" for p in params) and params[0].name == "key":
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_complete(name):
    module = importlib.import_module(name)
    exported = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        # defined in this module or, for a package, in one of its submodules
        and getattr(obj, "__module__", "").startswith(name)
    }
    assert exported <= set(module.__all__)
