"""Every XLabError a constructor raises while the CLI builds the data module or the model is one line.

The cases are found, not listed: every data-module and model class in the package (classes added
later included) is probed argument by argument with values that break the usual rules (zero,
negative, odd sizes, unknown kinds, fractions that do not sum to one). Each value a constructor
refuses with an XLabError is then given to the real CLI, which must print that refusal as its one
`error:` line, with no traceback and no dump of the parsed settings.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import textwrap
import types
import typing

import pytest
import yaml

import xlab
from tests.helpers import TOKENIZER_SIZE
from xlab.cli import main
from xlab.common.errors import XLabError
from xlab.datamodules import XLabDataModule
from xlab.models import LanguageModel, XLabModel

# Small sizes, so that probing a model costs milliseconds; only the names a class takes are used.
MODEL_BASE = {"vocab_size": 64, "max_len": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, "enc_dim": 32,
              "enc_depth": 1, "chunk_size": 4, "memory_size": 64, "num_search_results": 2, "use_memory": True}
DATA_BASE = {"max_len": 16, "chunk_size": 4, "vocab_size": TOKENIZER_SIZE}
# Settings the CLI links from the other side: a value given for them would be overwritten.
LINKED = {"data": {"max_len"}, "model": {"vocab_size", "sos_id", "eos_id", "pad_id"}}
# The issue's own examples: the probe must find at least these.
KNOWN = {("XLabDataModule", "sources"), ("XLabDataModule", "split_fractions"), ("XLabModel", "max_len")}


def _subclasses(base: type) -> set[type]:
    found = set()
    for cls in base.__subclasses__():
        found |= {cls, *_subclasses(cls)}
    return found


def _import_package() -> None:
    """Import every module of xlab, so each data-module and model class is defined."""
    for module in pkgutil.walk_packages(xlab.__path__, "xlab."):
        importlib.import_module(module.name)


def data_module_classes() -> list[type]:
    _import_package()
    classes = {XLabDataModule, *_subclasses(XLabDataModule)}
    return sorted((c for c in classes if c.__module__.startswith("xlab.")), key=lambda c: c.__name__)


def model_classes() -> list[type]:
    _import_package()
    classes = _subclasses(LanguageModel)
    return sorted((c for c in classes if c.__module__.startswith("xlab.") and not inspect.isabstract(c)),
                  key=lambda c: c.__name__)


def _set_for_base(klass: type) -> set[str]:
    """Names `klass.__init__` passes to its base itself (`super().__init__(name=...)`): the CLI, like
    jsonargparse, does not offer them, so they are not the subclass's settings."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(klass.__init__)))
    return {kw.arg for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__init__" for kw in node.keywords if kw.arg}


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The arguments of `cls` and of the bases it forwards `**kwargs` to, by name."""
    params: dict[str, inspect.Parameter] = {}
    hidden: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        signature = inspect.signature(klass.__init__)
        for p in signature.parameters.values():
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in hidden:
                params.setdefault(p.name, p)
        hidden |= _set_for_base(klass)
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return params


def _plain(annotation) -> set:
    """The types an annotation admits, unions and Optional unpacked (Literal left out: the parser checks it)."""
    if isinstance(annotation, str):
        return set()
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_plain(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return set()
    return {origin or annotation}


def bad_values(param: inspect.Parameter, hints: dict) -> list:
    kinds = _plain(hints.get(param.name, param.annotation))
    values = []
    if int in kinds and bool not in kinds:
        values += [0, -1, 3, 100]
    if float in kinds:
        values += [-1.0, 2.0]
    if tuple in kinds:
        values += [[1.0, 0.5, 0.25, 0.25], [0.0, 0.5, 0.25, 0.25], [0.5]]
    if list in kinds:
        values += [[{"kind": "ftp", "path": "/x"}], [{"path": "/x"}], [{"kind": "text_folder", "path": "/no/such/folder"}],
                   [{"kind": "embedded", "colour": "red"}], [-1], [], [100]]
    if dict in kinds:
        values += [{"kind": "ftp"}, {}]
    if str in kinds:
        values += ["/no/such/xlab/path", "no-such-kind"]
    return values


def _hints(cls: type) -> dict:
    hints = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            try:
                hints.update(typing.get_type_hints(klass.__init__))
            except Exception:  # an annotation naming an optional import: fall back to the raw one
                pass
    return hints


def refusals(cls: type, base: dict, section: str) -> list[tuple[str, object, str]]:
    """(argument, value, message) for the first value of each argument that `cls` refuses with an XLabError."""
    params = constructor_parameters(cls)
    settings = {k: v for k, v in base.items() if k in params}
    try:
        cls(**settings)  # the base settings themselves must be accepted
    except Exception as error:
        UNBUILDABLE[cls.__name__] = f"{type(error).__name__}: {error}"
        return []
    hints, found = _hints(cls), []
    for name, param in params.items():
        if name in LINKED[section]:
            continue
        for value in bad_values(param, hints):
            try:
                cls(**(settings | {name: value}))
            except XLabError as error:
                found.append((name, value, " ".join(str(error).split())))
                break
            except Exception:  # refused some other way: outside this test's contract
                continue
    return found


UNBUILDABLE: dict[str, str] = {}  # classes the probe could not build from the base settings, and why


def cases() -> list:
    out = []
    for cls in data_module_classes():
        out += [pytest.param("data", cls, *case, id=f"{cls.__name__}.{case[0]}") for case in refusals(cls, DATA_BASE, "data")]
    for cls in model_classes():
        out += [pytest.param("model", cls, *case, id=f"{cls.__name__}.{case[0]}") for case in refusals(cls, MODEL_BASE, "model")]
    return out


CASES = cases()


def test_every_class_builds_from_the_probe_settings():
    assert not UNBUILDABLE, (f"the probe cannot build {UNBUILDABLE}: add the settings these classes need "
                             "to DATA_BASE or MODEL_BASE")


def test_the_probe_finds_the_known_refusals_and_every_class():
    found = {(p.values[1].__name__, p.values[2]) for p in CASES}
    assert KNOWN <= found
    classes = {p.values[1] for p in CASES}
    assert set(model_classes()) <= classes, "a model class refuses nothing the probe tries"
    assert len(data_module_classes()) >= 3 and len(model_classes()) >= 3


def _config(tmp_path, corpus_dir, section, cls, name, value) -> str:
    model_cls = cls if section == "model" else XLabModel
    data_cls = cls if section == "data" else XLabDataModule
    model_args = {k: v for k, v in MODEL_BASE.items() if k in constructor_parameters(model_cls) and k not in LINKED["model"]}
    data_args = {"sources": [{"kind": "text_folder", "path": str(corpus_dir)}], "vocab_size": TOKENIZER_SIZE,
                 "cache_dir": str(tmp_path.parent / "constructor-errors-cache"), "batch_size": 4}
    data_args |= {k: v for k, v in DATA_BASE.items() if k in constructor_parameters(data_cls) and k not in LINKED["data"]}
    (model_args if section == "model" else data_args)[name] = value
    config = {"trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "logger": False,
                          "enable_progress_bar": False, "enable_checkpointing": False},
              "checkpoint": {"save_top_k": 0, "save_last": False},
              "model": {"class_path": f"{model_cls.__module__}.{model_cls.__name__}", "init_args": model_args},
              "data": {"class_path": f"{data_cls.__module__}.{data_cls.__name__}", "init_args": data_args}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(config))))
    return str(path)


@pytest.mark.parametrize("section, cls, name, value, message", CASES)
def test_a_refused_setting_is_one_error_line(section, cls, name, value, message, tmp_path, corpus_dir, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["fit", "-c", _config(tmp_path, corpus_dir, section, cls, name, value)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Given value" not in err and "Namespace(" not in err
    if name != "max_len":  # a model's max_len reaches the data module first, which refuses it in its own words
        assert lines[0] == f"error: {message}"
