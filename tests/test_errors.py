"""One error base: every exception class commandv defines is a ``CommandVError``, which ``cmdv`` prints as one
line with exit code 2 (and the server answers with HTTP 400 when it is also a ``ValueError``)."""

import importlib
import inspect
import pkgutil

import pytest
import typer
from typer.testing import CliRunner

import commandv
from commandv.runtime.errors import CommandVError, EngineError, ModelError, PackError

PACKAGES = ("commandv.runtime", "commandv.profiles", "commandv.exporter")
OPTIONAL = {"fastapi", "starlette", "sse_starlette", "uvicorn", "ray", "onnxruntime", "onnx", "onnxscript",
            "tokenizers", "torch", "transformers", "accelerate", "huggingface_hub", "llama_cpp", "matplotlib",
            "pyreft", "pyvene"}
"""Optional dependencies (pyproject.toml extras): a module that needs a missing one is skipped."""


def commandv_modules() -> tuple[list, list[str]]:
    """Every importable commandv module, and the names of those skipped for a missing optional dependency."""
    names = {m.name for m in pkgutil.walk_packages(commandv.__path__, "commandv.")}  # an ordinary install
    for package in PACKAGES:  # the editable install maps each folder to its package
        names.add(package)
        names |= {m.name for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")}
    modules, skipped = [], []
    for name in sorted(names):
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in OPTIONAL:
                raise
            skipped.append(name)
    return modules, skipped


def defined_exceptions(module) -> list[type]:
    """The exception classes ``module`` defines (not those it imports); warnings are not errors."""
    return [obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, Exception) and not issubclass(obj, Warning)
            and obj.__module__ == module.__name__]


def test_every_exception_class_is_a_commandv_error():
    modules, skipped = commandv_modules()
    assert len(modules) > 50, f"walked only {len(modules)} modules (skipped {skipped})"
    found = [cls for m in modules for cls in defined_exceptions(m)]
    assert len(found) > 30
    outside = [f"{cls.__module__}.{cls.__qualname__}" for cls in found if not issubclass(cls, CommandVError)]
    assert not outside, f"not derived from commandv.runtime.errors.CommandVError: {outside}"


def test_families_keep_their_builtin_bases():
    """``except ValueError`` code keeps working; the families are importable where they used to live."""
    from commandv.runtime.engines.llama.engine import EngineError as engine_error
    from commandv.runtime.engines.llama.lowlevel import LlamaError
    from commandv.runtime.models.ref import ModelError as model_error
    from commandv.runtime.models.zoo import ZooError
    from commandv.runtime.pack.model import PackError as pack_error

    for cls in (ModelError, PackError, EngineError, ZooError):
        assert issubclass(cls, (CommandVError, ValueError))
    assert issubclass(LlamaError, CommandVError) and issubclass(LlamaError, RuntimeError)
    assert (model_error, pack_error, engine_error) == (ModelError, PackError, EngineError)


def _app(exc: BaseException) -> typer.Typer:
    from commandv.exporter.cli.main import user_errors

    app = typer.Typer()

    @app.command()
    @user_errors
    def boom(name: str = "x") -> None:
        """Raise ``exc``."""
        raise exc

    return app


@pytest.mark.parametrize("exc", [CommandVError("the pack is broken"), PackError("the pack is broken"),
                                 FileNotFoundError("the pack is broken")])
def test_cli_prints_one_line_and_exits_2(exc):
    res = CliRunner().invoke(_app(exc), [])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == ["error: the pack is broken"]  # stdout and stderr together


def test_cli_lets_other_errors_through():
    """A plain ``ValueError`` (a bug, not a user error) is not swallowed into a red line."""
    res = CliRunner().invoke(_app(ValueError("bug")), [])
    assert res.exit_code == 1 and isinstance(res.exception, ValueError)


def test_cli_names_the_missing_optional_package():
    """A command whose optional dependency is missing says, in one line, which pip package to install; a missing
    module that is no optional dependency (a bug, e.g. a misspelled import) keeps its traceback."""
    from commandv.runtime.cli.errors import OPTIONAL_PACKAGES

    assert OPTIONAL <= set(OPTIONAL_PACKAGES)
    res = CliRunner().invoke(_app(ModuleNotFoundError("No module named 'pyreft'", name="pyreft")), [])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        "error: this command needs pyreft (pyreft is not installed); pip install pyreft"]
    res = CliRunner().invoke(_app(ModuleNotFoundError("No module named 'ray.serve'", name="ray.serve")), [])
    assert res.exit_code == 2 and res.output.strip().endswith("pip install ray[serve]")
    res = CliRunner().invoke(_app(ModuleNotFoundError("No module named 'commandv.nope'", name="commandv.nope")), [])
    assert res.exit_code == 1 and isinstance(res.exception, ModuleNotFoundError)


def test_cli_command_without_its_optional_dependency(monkeypatch):
    """``cmdv onnx info`` imports onnx when it runs: without it, one line naming the package."""
    import sys

    from commandv.exporter.cli.main import app

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ModuleNotFoundError
    res = CliRunner().invoke(app, ["onnx", "info", "model.onnx"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        "error: this command needs onnx (onnx is not installed); pip install onnx"]


def test_server_maps_commandv_value_errors_to_400():
    from commandv.runtime.serve.openai_api import error_from

    assert error_from(EngineError("prompt is empty")).status == 400
    assert error_from(ModelError("no model")).status == 400
    assert error_from(ValueError("bug")).status == 500
    assert error_from(CommandVError("not a ValueError")).status == 500
