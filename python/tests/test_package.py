"""The package as shipped: type stubs that cover the module, docstrings, py.typed."""

from __future__ import annotations

import ast
import pathlib

import spillway
import spillway._spillway as core

PKG = pathlib.Path(spillway.__file__).parent


def test_stubs_cover_the_module():
    stub = ast.parse((PKG / "_spillway.pyi").read_text())
    declared = {n.name for n in stub.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    public = {n for n in dir(core) if not n.startswith("__")}
    assert public - declared == set()
    assert (PKG / "py.typed").exists()
    for name in spillway.__all__:
        assert getattr(spillway, name).__doc__, name
