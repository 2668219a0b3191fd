"""The three engines (llama.cpp, ONNX Runtime, transformers) have the methods and attributes of
:class:`commandv.runtime.engines.protocol.Engine`, with its parameter names in its order. Read from the classes
(no model is loaded); an engine whose module cannot be imported here is skipped."""

import ast
import importlib
import inspect
import textwrap

import pytest

from commandv.runtime.engines.protocol import ENGINE_ATTRIBUTES, ENGINE_METHODS, Engine

ENGINES = {"Recipient": "commandv.runtime.engines.llama.engine", "OnnxRecipient": "commandv.runtime.engines.onnx.engine",
           "TorchRecipient": "commandv.runtime.engines.reference"}


def engine_class(name: str) -> type:
    try:
        module = importlib.import_module(ENGINES[name])
    except ImportError as exc:
        pytest.skip(f"{ENGINES[name]} not importable here: {exc}")
    return getattr(module, name)


def _params(fn) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def assigned_in_init(cls: type) -> set[str]:
    """Names ``self.X`` assigned (also in tuples) in the ``__init__`` of ``cls`` and its bases."""
    names = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or not inspect.isfunction(init):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for t in targets:
                for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name) and el.value.id == "self":
                        names.add(el.attr)
    return names


def test_protocol_lists_its_members():
    """ENGINE_METHODS / ENGINE_ATTRIBUTES name exactly what :class:`Engine` declares."""
    methods = {k for k, v in vars(Engine).items() if inspect.isfunction(v) and not k.startswith("_")}
    assert methods == set(ENGINE_METHODS)
    assert set(Engine.__annotations__) == set(ENGINE_ATTRIBUTES)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_engine_has_the_protocol_methods(name):
    cls = engine_class(name)
    for method in ENGINE_METHODS:
        fn = getattr(cls, method, None)
        assert callable(fn), f"{name} has no method {method}"
        want, have = _params(getattr(Engine, method)), _params(fn)
        by_name = {p.name: p for p in have}
        positional = [p.name for p in have if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        for i, p in enumerate(want):
            assert p.name in by_name, f"{name}.{method} lacks parameter {p.name!r}"
            q = by_name[p.name]
            if p.kind == p.POSITIONAL_OR_KEYWORD:
                assert positional[i:i + 1] == [p.name], \
                    f"{name}.{method}: parameter {p.name!r} is not at position {i} ({positional})"
            else:
                assert q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY), f"{name}.{method}: {p.name!r} by keyword"
            if p.default is not p.empty:
                assert q.default is not q.empty, f"{name}.{method}: {p.name!r} has no default"
        extra = [p.name for p in have if p.name not in {w.name for w in want} and p.default is p.empty
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        assert not extra, f"{name}.{method}: parameters {extra} need a default (the protocol does not pass them)"


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_engine_has_the_protocol_attributes(name):
    cls = engine_class(name)
    have = set(dir(cls)) | assigned_in_init(cls)
    missing = [a for a in ENGINE_ATTRIBUTES if a not in have]
    assert not missing, f"{name} lacks {missing}"


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_engine_is_a_context_manager(name):
    cls = engine_class(name)
    assert callable(getattr(cls, "__enter__", None)) and callable(getattr(cls, "__exit__", None))


def test_public_names():
    """``commandv.runtime`` hands out the engines (lazily) and the protocol."""
    import commandv.runtime as rt

    for name in ENGINES:
        assert name in rt.__all__
    assert rt.Engine is Engine
