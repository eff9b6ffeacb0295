"""House rules for the public API, checked on every public callable of ``jad``.

The pattern of dm-pix's API test: import ``jad``, walk its subpackages with
``pkgutil.walk_packages`` and check each public module and each public function or
class it exports. A module is public when no component of its dotted path starts
with ``_`` (``jad.metrics._common`` is private, and so is everything it defines
unless a public module exports it). ``jad.cli`` and its submodules are left out:
their interface is the command line (argparse flags, help and exit codes, tested
under ``tests/cli/``), their functions are subcommand handlers over an
``argparse.Namespace``, and ``jad.cli.__main__`` runs the CLI when imported.

What is checked, each rule in its own test so that one run lists every violation of
every rule, as ``module:function: what is wrong [rule id]`` (a function or class is
named by the module that defines it, so a name re-exported by a package is reported
once, where to fix it):

(a) every public module has ``__all__`` and every name in it exists;
(b) a public function or class defined in a module (for a package: in it or its
    submodules) is in its ``__all__`` (a helper starts with ``_``);
(c) a public function has a Google-style docstring: a summary; an ``Args:`` section
    that names each of its parameters (``*args``/``**kwargs`` included) when it has
    any; a ``Returns:`` or ``Yields:`` section unless it returns None, that is unless
    its return annotation is ``None``, or it has none and its body (nested
    functions aside) has no ``return <value>`` and no ``yield``. A public class has a
    docstring (its fields are its ``Attributes:`` or ``Args:``, not checked here);
(d) a parameter with a default is keyword-only; classes are not functions (a
    NamedTuple's, dataclass's or Flax module's fields are positional by design);
(e) a parameter named ``key`` (a PRNG key) is the first one (kernels,
    ``random_dictionary(key, m, K)``) or keyword-only (``fit(config, x, *, key)``);
(f) no parameter, of a function or of a class's constructor or public methods, is
    named ``rng``, ``seed_key``, ``prng`` or ``random_state`` (randomness is a
    ``key``).

Known violations sit in ``ALLOWED`` with their reason; an entry that no longer
matches a violation fails :func:`test_allowed_violations_still_exist`, so the list
only shrinks.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
import textwrap
import types

import pytest

import jad

EXCLUDED = ("jad.cli",)  # see the module docstring
FORBIDDEN_NAMES = ("rng", "seed_key", "prng", "random_state")

# (where, rule) -> why it is allowed. ``where`` is "defining module:qualified name",
# ``rule`` the id of a :class:`Violation` (what the failure message prints).
ALLOWED: dict[tuple[str, str], str] = {
    ("jad.methods.base:make_config", "keyword-only:preset"): (
        "positional-only on purpose: PatchCore's config has a field named preset, "
        "which **overrides must be able to set"
    ),
}


@dataclasses.dataclass(frozen=True)
class Violation:
    where: str  # "module:name"
    rule: str  # stable id, e.g. "keyword-only:batch_size", the ALLOWED key
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message} [{self.rule}]"


# ------------------------------------------------------------------ collection


def _is_public(module_name: str) -> bool:
    return not any(part.startswith("_") for part in module_name.split("."))


def _public_modules() -> list[types.ModuleType]:
    names = ["jad"]
    for info in pkgutil.walk_packages(jad.__path__, "jad."):
        if _is_public(info.name) and not any(
            info.name == p or info.name.startswith(p + ".") for p in EXCLUDED
        ):
            names.append(info.name)
    return [importlib.import_module(name) for name in sorted(names)]


MODULES = _public_modules()


def _unwrap(obj):
    """The Python function behind a decorator (``functools.wraps``, ``jax.jit``)."""
    try:
        return inspect.unwrap(obj)
    except ValueError:  # a cycle of __wrapped__
        return obj


def _is_jad_function(obj) -> bool:
    fn = _unwrap(obj)
    return inspect.isfunction(fn) and fn.__module__.startswith("jad")


def _is_jad_class(obj) -> bool:
    return inspect.isclass(obj) and obj.__module__.startswith("jad")


def _where(obj) -> str:
    obj = obj if inspect.isclass(obj) else _unwrap(obj)
    return f"{obj.__module__}:{obj.__qualname__}"


def _exported() -> tuple[list, list]:
    """Every (function, class) exported by a public module's ``__all__``, once."""
    functions, classes, seen = {}, {}, set()
    for module in MODULES:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if id(obj) in seen:
                continue
            if _is_jad_class(obj):
                classes[_where(obj)] = obj
            elif _is_jad_function(obj):
                functions[_where(obj)] = obj
            else:
                continue
            seen.add(id(obj))
    return sorted(functions.items()), sorted(classes.items())


FUNCTIONS, CLASSES = _exported()


# --------------------------------------------------------------------- rules


def _section(doc: str, title: str) -> list[str] | None:
    """The lines of a Google-style section (``title:`` at column 0), or None."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip() == f"{title}:":
            body = []
            for following in lines[i + 1 :]:
                if following and not following[0].isspace():
                    break  # the next section or paragraph
                body.append(following)
            return body
    return None


_ENTRY = re.compile(r"(\*{0,2}\w+(?:, *\*{0,2}\w+)*)(?: *\([^)]*\))?:(?:\s|$)")


def _documented_names(args: list[str]) -> set[str]:
    """Names of the entries of an ``Args:`` section (``a, b: ...`` names both)."""
    text = textwrap.dedent("\n".join(args))
    names = set()
    for line in text.splitlines():
        if line and not line[0].isspace():
            match = _ENTRY.match(line)
            if match:
                names.update(n.strip().lstrip("*") for n in match.group(1).split(","))
    return names


def _returns_value(fn) -> bool:
    """Whether ``fn`` returns something: see rule (c) in the module docstring."""
    annotation = inspect.signature(fn, eval_str=False).return_annotation
    if annotation is not inspect.Signature.empty:
        return annotation not in (None, "None", "NoReturn", "typing.NoReturn")
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return True  # cannot tell: ask for the section
    tree = ast.parse(source).body[0]

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
            ):
                continue  # another scope
            if isinstance(child, (ast.Yield, ast.YieldFrom)):
                return True
            if isinstance(child, ast.Return) and child.value is not None:
                value = child.value
                if not (isinstance(value, ast.Constant) and value.value is None):
                    return True
            if walk(child):
                return True
        return False

    return walk(tree)


def _parameters(obj) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):  # no signature (some builtins)
        return []


def _docstring_violations(where: str, fn) -> list[Violation]:
    doc = inspect.getdoc(fn)
    if not doc or not doc.strip():
        return [Violation(where, "docstring", "has no docstring")]
    out = []
    params = _parameters(fn)
    if params:
        args = _section(doc, "Args")
        if args is None:
            out.append(Violation(where, "docstring:Args", "no 'Args:' section"))
        else:
            documented = _documented_names(args)
            for p in params:
                if p.name not in documented:
                    out.append(
                        Violation(
                            where,
                            f"docstring:Args:{p.name}",
                            f"parameter {p.name!r} is not in its 'Args:' section",
                        )
                    )
    if _returns_value(fn) and not (
        _section(doc, "Returns") is not None or _section(doc, "Yields") is not None
    ):
        out.append(
            Violation(where, "docstring:Returns", "no 'Returns:' (or 'Yields:')")
        )
    return out


def _keyword_only_violations(where: str, params) -> list[Violation]:
    return [
        Violation(
            where,
            f"keyword-only:{p.name}",
            f"option {p.name!r} has a default but is not keyword-only (put it "
            "after '*')",
        )
        for p in params
        if p.default is not inspect.Parameter.empty
        and p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]


def _key_violations(where: str, params) -> list[Violation]:
    return [
        Violation(
            where,
            "key-position",
            "'key' must be the first parameter (a kernel) or keyword-only",
        )
        for i, p in enumerate(params)
        if p.name == "key" and i > 0 and p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]


def _forbidden_name_violations(where: str, params) -> list[Violation]:
    return [
        Violation(
            where,
            f"forbidden-name:{p.name}",
            f"parameter {p.name!r}: randomness comes from an explicit 'key'",
        )
        for p in params
        if p.name in FORBIDDEN_NAMES
    ]


def _class_signatures(cls) -> list[tuple[str, list[inspect.Parameter]]]:
    """(where, parameters) of a class's constructor and public methods."""
    where = _where(cls)
    out = [(where, _parameters(cls))]
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(_unwrap(member)):
            out.append((f"{where}.{name}", _parameters(member)))
    return out


def _all_violations_of(module) -> list[Violation]:
    """Rule (a): ``__all__`` exists and names only what exists."""
    name = module.__name__
    exported = getattr(module, "__all__", None)
    if exported is None:
        return [Violation(f"{name}:", "__all__", "has no __all__")]
    return [
        Violation(f"{name}:{attr}", "__all__:missing", "is in __all__ but missing")
        for attr in exported
        if not hasattr(module, attr)
    ]


def _unlisted_violations_of(module) -> list[Violation]:
    """Rule (b): public functions and classes defined in ``module`` are exported.

    For a package, "defined in" includes its submodules: what its ``__init__``
    imports from them is re-exported.
    """
    exported = set(getattr(module, "__all__", ()))
    package = hasattr(module, "__path__")
    out = []
    for attr, obj in vars(module).items():
        if attr.startswith("_") or attr in exported:
            continue
        if not (_is_jad_function(obj) or _is_jad_class(obj)):
            continue
        defined_in = (obj if inspect.isclass(obj) else _unwrap(obj)).__module__
        if not (
            defined_in == module.__name__
            or package
            and defined_in.startswith(module.__name__ + ".")
        ):
            continue  # imported from elsewhere, not this module's to export
        out.append(
            Violation(
                f"{module.__name__}:{attr}",
                "__all__:unlisted",
                "is public but not in __all__ (export it, or rename it "
                f"_{attr} if it is a helper)",
            )
        )
    return out


def _all_violations() -> dict[str, list[Violation]]:
    by_rule = {
        "a": [v for m in MODULES for v in _all_violations_of(m)],
        "b": [v for m in MODULES for v in _unlisted_violations_of(m)],
        "c": [],
        "d": [],
        "e": [],
        "f": [],
    }
    for where, fn in FUNCTIONS:
        params = _parameters(fn)
        by_rule["c"] += _docstring_violations(where, fn)
        by_rule["d"] += _keyword_only_violations(where, params)
        by_rule["e"] += _key_violations(where, params)
        by_rule["f"] += _forbidden_name_violations(where, params)
    for where, cls in CLASSES:
        if not (inspect.getdoc(cls) or "").strip():
            by_rule["c"].append(Violation(where, "docstring", "has no docstring"))
        for member, params in _class_signatures(cls):
            by_rule["f"] += _forbidden_name_violations(member, params)
    return by_rule


VIOLATIONS = _all_violations()


def _check(rule: str, title: str) -> None:
    found = [v for v in VIOLATIONS[rule] if (v.where, v.rule) not in ALLOWED]
    if found:
        lines = "\n".join(f"  {v}" for v in sorted(found, key=str))
        pytest.fail(
            f"{len(found)} violation(s) of rule ({rule}), {title}:\n{lines}\n"
            "Fix them, or add (where, rule) to ALLOWED in tests/test_api.py with the "
            "reason.",
            pytrace=False,
        )


# ---------------------------------------------------------------------- tests


def test_the_walk_finds_the_public_api():
    names = {m.__name__ for m in MODULES}
    # a few of each kind, so that a broken walk cannot pass by checking nothing
    assert {"jad", "jad.metrics", "jad.methods.patchcore", "jad.viz"} <= names
    assert not any(n.startswith("jad.cli") or "._" in n for n in names)
    functions = dict(FUNCTIONS)
    assert "jad.metrics.regions:pro" in functions
    assert "jad.sparse.omp:omp" in functions
    assert "jad.metrics.regions:PROCurve" in dict(CLASSES)
    assert len(FUNCTIONS) > 50


def test_every_module_has_a_complete_all():
    _check("a", "every public module has __all__ and every name in it exists")


def test_public_functions_and_classes_are_in_all():
    _check("b", "public functions and classes defined in a module are in its __all__")


def test_docstrings_have_args_and_returns():
    _check("c", "Google-style docstrings with Args and Returns/Yields")


def test_options_with_defaults_are_keyword_only():
    _check("d", "options with defaults are keyword-only")


def test_key_is_first_or_keyword_only():
    _check("e", "a PRNG 'key' is the first parameter or keyword-only")


def test_no_other_names_for_randomness():
    _check("f", f"no parameter named {', '.join(FORBIDDEN_NAMES)}")


def test_allowed_violations_still_exist():
    found = {(v.where, v.rule) for vs in VIOLATIONS.values() for v in vs}
    stale = sorted(set(ALLOWED) - found)
    assert not stale, (
        "ALLOWED entries that match no violation any more (fixed: remove them):\n"
        + "\n".join(f"  {where} {rule}" for where, rule in stale)
    )


def test_rules_catch_what_they_should():
    """The checkers themselves, on small functions written to break each rule."""

    def good(images, *, key, scale: float = 1.0) -> int:
        """Summary.

        Args:
          images: (B, H, W, C).
          key: a PRNG key.
          scale (float): a factor.

        Returns:
          A number.
        """
        return 1

    def bad(images, scale=1.0, key=None, rng=None):
        """Summary only."""
        return images

    def no_return(a, b):
        """Summary.

        Args:
          a, b: two things.
        """

    assert _docstring_violations("good", good) == []
    assert _keyword_only_violations("good", _parameters(good)) == []
    assert _key_violations("good", _parameters(good)) == []

    def half_documented(a, b) -> int:
        """Summary.

        Args:
          a: documented; b is not.
        """
        ...

    def generator(n):
        """Summary.

        Args:
          n: how many.
        """
        yield from range(n)

    assert _docstring_violations("no_return", no_return) == []
    assert {v.rule for v in _docstring_violations("half", half_documented)} == {
        "docstring:Args:b",
        "docstring:Returns",  # annotated int: a stub still documents its result
    }
    assert [v.rule for v in _docstring_violations("gen", generator)] == [
        "docstring:Returns"
    ]
    rules = {v.rule for v in _docstring_violations("bad", bad)}
    assert rules == {"docstring:Args", "docstring:Returns"}
    params = _parameters(bad)
    assert {v.rule for v in _keyword_only_violations("bad", params)} == {
        "keyword-only:scale",
        "keyword-only:key",
        "keyword-only:rng",
    }
    assert [v.rule for v in _key_violations("bad", params)] == ["key-position"]
    assert [v.rule for v in _forbidden_name_violations("bad", params)] == [
        "forbidden-name:rng"
    ]
    # (a) and (b) on a module made here
    module = types.ModuleType("jad.fake")
    good.__module__ = bad.__module__ = "jad.fake"
    module.good, module.bad, module.__all__ = good, bad, ["good", "gone"]

    def elsewhere():
        """Imported from another module: not this module's to export."""

    elsewhere.__module__ = "jad.other"
    module.elsewhere = elsewhere
    assert [v.rule for v in _all_violations_of(module)] == ["__all__:missing"]
    assert [v.where for v in _unlisted_violations_of(module)] == ["jad.fake:bad"]
    del module.__all__
    assert [v.rule for v in _all_violations_of(module)] == ["__all__"]
