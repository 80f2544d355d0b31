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

from sam3_ros.launch_plan import NODE_KINDS

REPO = Path(__file__).resolve().parents[1]
NODE_PARAM_TABLES = {
    "segmenter": "sam3_ros.ros.segmenter_node",
    "tracker": "sam3_ros.ros.tracker_node",
}


def _launch_files() -> list[Path]:
    return sorted((REPO / "launch").glob("*.launch.py"))


def _installed_programs() -> set[str]:
    cmake = (REPO / "CMakeLists.txt").read_text()
    block = re.search(r"install\(PROGRAMS(.*?)DESTINATION", cmake, re.S).group(1)
    return {Path(p).name for p in block.split()}


def test_there_are_launch_files():
    assert (REPO / "launch" / "sam3.launch.py") in _launch_files()


@pytest.mark.parametrize("launch_file", _launch_files(), ids=lambda p: p.name)
def test_launch_files_are_the_one_family(launch_file):
    """Every launch file is `launch_description.generate`, with at most `node` preset to a
    real node kind."""
    tree = ast.parse(launch_file.read_text())
    calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call)
             and isinstance(c.func, ast.Name) and c.func.id == "generate"]
    assert len(calls) == 1, "a launch file calls generate() once"
    preset = {kw.arg: kw.value.value for kw in calls[0].keywords}
    assert set(preset) <= {"node"}
    assert preset.get("node", "segmenter") in NODE_KINDS
    stem = launch_file.name.removesuffix(".launch.py")
    if stem in NODE_KINDS:
        assert preset == {"node": stem}


@pytest.mark.parametrize("kind", NODE_KINDS)
def test_node_kinds_are_installed_executables(kind):
    assert (REPO / "scripts" / kind).is_file()
    assert kind in _installed_programs()


def test_launch_parameters_are_declared_by_every_node():
    pytest.importorskip("rclpy")
    pytest.importorskip("sam3_ros.msg")
    from sam3_ros.launch_plan import _PARAMETER_ARGUMENTS

    for node, module in NODE_PARAM_TABLES.items():
        declared = set(importlib.import_module(module).PARAMS) | {"use_sim_time"}
        assert set(_PARAMETER_ARGUMENTS) <= declared, node


def test_launch_description_runs_where_launch_exists(tmp_path, monkeypatch):
    """On a ROS install with launch_ros (not in CI): every launch file builds its actions, and
    removes the parameter files it wrote at shutdown (every launch left two in /tmp)."""
    pytest.importorskip("launch_ros")
    import importlib.util
    import tempfile

    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
    from launch.events import Shutdown

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for path in _launch_files():
        spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        description = module.generate_launch_description()
        context = LaunchContext()
        for entity in description.entities:
            if isinstance(entity, DeclareLaunchArgument):
                entity.visit(context)
        opaque = [e for e in description.entities if isinstance(e, OpaqueFunction)]
        assert len(opaque) == 1
        actions = opaque[0].execute(context)
        assert any(type(a).__name__ in ("Node", "LifecycleNode") for a in actions), path
        written = list(tmp_path.glob("sam3_ros_params_*.yaml"))
        assert written, path
        (handler,) = [a.event_handler for a in actions if isinstance(a, RegisterEventHandler)]
        handler.handle(Shutdown(), context)
        assert not any(p.exists() for p in written), path


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


_USER_FILES = {
    # The README's form; and the form rcl ranked above the arguments before the fix.
    "wildcard": "/**/segmenter:\n  ros__parameters:\n    prompts: [ball]\n"
                "    score_threshold: 0.2\n    autostart: false\n",
    "exact": "/robot/front/segmenter:\n  ros__parameters:\n    prompts: [ball]\n"
             "    score_threshold: 0.2\n    autostart: false\n",
    "nested": "robot:\n  front:\n    segmenter:\n      ros__parameters:\n"
              "        prompts: [ball]\n        score_threshold: 0.2\n        autostart: false\n",
    # A user who took the keys the launch files would otherwise use.
    "global keys": "/**:\n  ros__parameters:\n    prompts: [ball]\n"
                   "/**/*:\n  ros__parameters:\n    score_threshold: 0.2\n"
                   "/**/segmenter:\n  ros__parameters:\n    autostart: false\n",
}


def _rcl_values(tmp_path, launch_plan, nodes: list[str], names: tuple[str, ...]) -> dict:
    """What rcl gives each node of `nodes` (fully qualified names, one process) for the
    parameters `names`, reading the plan's parameter files in its order, as the launched
    process would (`--params-file` each, written by `parameter_file_paths`, which
    launch_description calls)."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.node import Node

    from sam3_ros.launch_plan import parameter_file_paths

    files = []
    for path in parameter_file_paths(launch_plan.parameters, str(tmp_path)):
        files += ["--params-file", path]
    context = rclpy.Context()
    rclpy.init(args=["sam3_ros", "--ros-args", *files], context=context)
    values = {}
    try:
        for fqn in nodes:
            namespace, _, name = fqn.rpartition("/")
            node = Node(name, namespace=namespace or "/", context=context,
                        automatically_declare_parameters_from_overrides=True)
            try:
                values[fqn] = {n: node.get_parameter(n).value for n in names}
            finally:
                node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    return values


@pytest.mark.parametrize("user_file", sorted(_USER_FILES))
def test_set_arguments_beat_the_params_file_and_unset_ones_do_not(tmp_path, user_file):
    """The argument set (prompts) wins over the user's file whatever its keys, the user's
    file wins over the launch files' own default (autostart) and the node's default
    (score_threshold)."""
    from test_launch_plan import PROFILE, _values

    from sam3_ros.launch_plan import plan

    mine = tmp_path / "mine.yaml"
    mine.write_text(_USER_FILES[user_file])
    launch_plan = plan(_values(params_file=str(mine), namespace="/robot/front",
                               prompts="[mug, cup]"), PROFILE)
    got = _rcl_values(tmp_path, launch_plan, ["/robot/front/segmenter"],
                      ("prompts", "score_threshold", "autostart"))
    assert got["/robot/front/segmenter"] == {"prompts": ["mug", "cup"], "score_threshold": 0.2,
                                             "autostart": False}


def test_cameras_get_the_arguments_and_their_own_keys(tmp_path):
    """Several nodes in one process (cameras): the argument reaches every node over the
    user's wildcard key, and a camera's own key (written after it) still reaches that
    camera only."""
    from test_launch_plan import PROFILE, _values

    from sam3_ros.launch_plan import plan

    mine = tmp_path / "mine.yaml"
    mine.write_text("/**/segmenter:\n  ros__parameters:\n    prompts: [ball]\n"
                    "    score_threshold: 0.3\n    autostart: false\n"
                    "/robot/front/segmenter:\n  ros__parameters:\n    score_threshold: 0.2\n")
    launch_plan = plan(_values(params_file=str(mine), cameras="[front, wrist]",
                               namespace="robot", prompts="mug"), PROFILE)
    assert launch_plan.executable == "pipeline"
    nodes = ["/robot/front/segmenter", "/robot/wrist/segmenter"]
    got = _rcl_values(tmp_path, launch_plan, nodes, ("prompts", "score_threshold", "autostart"))
    assert got == {
        "/robot/front/segmenter": {"prompts": ["mug"], "score_threshold": 0.2,
                                   "autostart": False},
        "/robot/wrist/segmenter": {"prompts": ["mug"], "score_threshold": 0.3,
                                   "autostart": False}}


@pytest.mark.parametrize(("given", "expected"), [
    (["score_treshold"], ["'score_treshold' (did you mean 'score_threshold'?)"]),
    (["prompts", "max_objects", "use_sim_time", "qos_overrides./image.subscription.depth"], []),
    (["frobnicate", "mdoel"], ["'frobnicate'", "'mdoel' (did you mean 'model'?)"]),
])
def test_unknown_parameters_are_named_with_the_closest_known(given, expected):
    from sam3_ros.ros.params import unknown_parameters
    from sam3_ros.ros.segmenter_node import PARAMS as SEGMENTER
    from sam3_ros.ros.tracker_node import PARAMS as TRACKER

    assert unknown_parameters(given, [*SEGMENTER, *TRACKER]) == expected
