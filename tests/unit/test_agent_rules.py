"""The agent's traps, written down as tests: it reaches the nodes as one flat package of
stdlib-only Python 3.8 modules, and requests reach their handlers by name."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import sys
from pathlib import Path

import pytest

import trainfleet.agent
from trainfleet.agent import protocol

AGENT = Path(trainfleet.agent.__file__).parent
MODULES = sorted(AGENT.glob("*.py"))
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}


def requests() -> list[type]:
    found, todo = [], list(protocol.Request.__subclasses__())
    while todo:
        kind = todo.pop()
        todo += kind.__subclasses__()
        if dataclasses.is_dataclass(kind):
            found.append(kind)
    return sorted(found, key=lambda k: k.op)


def test_every_request_names_a_handler_the_agent_has() -> None:
    """A renamed handler would otherwise fail only on a node, at the first such request."""
    kinds = requests()
    assert len(kinds) >= 20
    ops = [k.op for k in kinds]
    assert len(ops) == len(set(ops)), ops
    for kind in kinds:
        assert kind.op and kind.handler, kind
        module_name, function = kind.handler.rsplit(".", 1)
        module = importlib.import_module(f"trainfleet.agent.{module_name}")
        assert callable(getattr(module, function, None)), f"{kind.__name__}: {kind.handler} is not in the agent"
        assert dataclasses.is_dataclass(kind.reply_type), kind


def test_the_agent_is_one_flat_package_and_all_of_it_is_sent() -> None:
    """`sources()` sends the .py files of agent/ only: a subfolder would never reach a node."""
    below = [p for p in AGENT.rglob("*.py") if p.parent != AGENT]
    assert below == [], f"agent/ must stay flat (the nodes get its top level only): {below}"
    sent = trainfleet.agent.sources()
    assert set(sent) == {"tfagent" if p.stem == "__init__" else f"tfagent.{p.stem}" for p in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_an_agent_module_imports_the_stdlib_and_itself_only(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            # (rankwrap and sitecustomize are written on the nodes as loose files side by side)
            assert top == "__future__" or top in sys.stdlib_module_names or top in {p.stem for p in MODULES}, \
                f"{path.name}:{node.lineno}: imports {name}, which a bare node does not have (stdlib only)"


def _annotations(tree: ast.AST) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            every = arguments.posonlyargs + arguments.args + arguments.kwonlyargs + \
                [a for a in (arguments.vararg, arguments.kwarg) if a]
            found += [a.annotation for a in every if a.annotation] + ([node.returns] if node.returns else [])
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_an_agent_module_is_python_3_8(path: Path) -> None:
    """Nodes may run Python 3.8: its grammar, and no `X | Y` or `list[int]` in annotations
    (the protocol's are evaluated there by get_type_hints)."""
    tree = ast.parse(path.read_text(), feature_version=(3, 8))
    for annotation in _annotations(tree):
        if isinstance(annotation, ast.Constant):  # a string: never evaluated
            continue
        for node in ast.walk(annotation):
            assert not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)), \
                f"{path.name}:{node.lineno}: `X | Y` needs Python 3.10 (use Optional/Union)"
            assert not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
                        and node.value.id in BUILTIN_GENERICS), \
                f"{path.name}:{node.lineno}: `{node.value.id}[...]` needs Python 3.9 (use typing's List, Dict, ...)"


def test_the_agent_and_its_resident_do_not_import_each_other() -> None:
    resident = ast.parse((AGENT / "resident.py").read_text())
    imported = {n.module for n in ast.walk(resident) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(resident) if isinstance(n, ast.ImportFrom) and n.module is None for a in n.names}
    assert "main" not in imported


def _python38() -> str | None:
    import glob
    import shutil

    found = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.8*/bin/python")))  # (pyenv's shim may refuse)
    return found[0] if found else shutil.which("python3.8")


def test_the_agent_loads_and_decodes_on_a_real_python_3_8() -> None:
    import subprocess

    python = _python38()
    if python is None:
        pytest.skip("no Python 3.8 on this machine (the grammar test above still holds)")
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import importlib\n"
            "from trainfleet.agent import protocol as p\n"
            "for m in sys.argv[2:]: importlib.import_module('trainfleet.agent.' + m)\n"
            "s = p.decode(p.JobState, {'job_id': 'j', 'node': 'n', 'state': 'running', 'started': 1.0})\n"
            "print(s.state.live, '%s' % s.state)\n")
    modules = [p.stem for p in MODULES if p.stem not in ("__init__", "sitecustomize")]
    done = subprocess.run([python, "-c", code, str(AGENT.parent.parent), *modules], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["True", "running"], done.stderr[-2000:]
