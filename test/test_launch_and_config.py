"""What CI can check of the launch files without `launch` (not on PyPI): every executable and
parameter file they name exists and is installed, and every config/*.yaml holds exactly the
parameters its node declares, with the same defaults."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NODE_PARAM_TABLES = {
    "segmenter": "sam3_ros.ros.segmenter_node",
    "tracker": "sam3_ros.ros.tracker_node",
}


def _launch_files() -> list[Path]:
    return sorted((REPO / "launch").glob("*.launch.py"))


def _string_kwargs(tree: ast.AST, name: str) -> list[str]:
    return [kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
            for kw in node.keywords
            if kw.arg == name and isinstance(kw.value, ast.Constant)]


def _installed_programs() -> set[str]:
    cmake = (REPO / "CMakeLists.txt").read_text()
    block = re.search(r"install\(PROGRAMS(.*?)DESTINATION", cmake, re.S).group(1)
    return {Path(p).name for p in block.split()}


def test_there_are_launch_files():
    assert _launch_files()


@pytest.mark.parametrize("launch_file", _launch_files(), ids=lambda p: p.name)
def test_launch_file_names_real_executables_and_configs(launch_file):
    tree = ast.parse(launch_file.read_text())
    executables = _string_kwargs(tree, "executable")
    assert executables, "no executable named"
    for exe in executables:
        assert (REPO / "scripts" / exe).is_file(), exe
        assert exe in _installed_programs(), f"{exe} is not installed by CMakeLists.txt"
    assert set(_string_kwargs(tree, "package")) == {"sam3_ros"}
    configs = [c.value for c in ast.walk(tree)
               if isinstance(c, ast.Constant) and isinstance(c.value, str)
               and c.value.endswith((".yaml", ".xml"))]
    for config in configs:
        assert (REPO / "config" / config).is_file(), config
    # Parameters the launch file sets by name must be declared by the node(s) it starts.
    declared = set()
    for exe in executables:
        for node in NODE_PARAM_TABLES if exe == "pipeline" else [exe]:
            declared |= set(importlib.import_module(NODE_PARAM_TABLES[node]).PARAMS)
    for call in ast.walk(tree):
        if isinstance(call, ast.Dict):
            keys = {k.value for k in call.keys if isinstance(k, ast.Constant)}
            assert keys <= declared, f"undeclared parameters {keys - declared}"


@pytest.mark.parametrize("node", sorted(NODE_PARAM_TABLES))
def test_yaml_equals_declared_parameters(node):
    pytest.importorskip("rclpy")
    pytest.importorskip("sam3_ros.msg")
    params = importlib.import_module(NODE_PARAM_TABLES[node]).PARAMS
    path = REPO / "config" / f"{node}.yaml"
    values = yaml.safe_load(path.read_text())[f"/**/{node}"]["ros__parameters"]
    assert set(values) == set(params), (
        f"only in yaml: {set(values) - set(params)}; only declared: {set(params) - set(values)}")
    for name, spec in params.items():
        assert values[name] == spec.default, f"{node}.{name}: yaml {values[name]!r} != " \
                                             f"declared {spec.default!r}"
        assert type(values[name]) is type(spec.default), name
