"""The README's measuring and demo tools, run as a user runs them (tiny checkpoint, a few
frames, real DDS): they finish, and what they print is a measurement, not an artefact."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")

pytestmark = pytest.mark.ros


def _run(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def test_depth_demo_gives_3d_outputs(tiny_checkpoint, tmp_path):
    # It listened on <ns>/detections while the node publishes <ns>/segmenter/detections,
    # and timed out after 300 s.
    done = _run("sam3_ros.tools.demo", "--depth", "--model", str(tiny_checkpoint), "--frames",
                "2", "--output", str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # (How many frames got 3D depends on depth pairing under the machine's load.)
    assert re.search(r"[0-2] of 2 frames with 3D outputs", done.stdout), done.stdout[-2000:]


def test_benchmark_latencies_are_measured_not_stale_replies(tiny_checkpoint):
    # The warm-up frames shared the timed frames' stamps: their replies were taken for the
    # timed frames' results (node end to end -9894 ms).
    done = _run("sam3_ros.tools.benchmark", "--model", str(tiny_checkpoint), "--frames", "5",
                "--rate-seconds", "1", "--settle-ms", "50")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| node end to end"))
    median, p90 = (float(v) for v in row.split("|")[2:4])
    assert 0 < median <= p90, row


def test_tools_refuse_bad_counts_in_one_line(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"real weights")
    for args in (("sam3_ros.tools.benchmark", "--frames", "0"),
                 ("sam3_ros.tools.multi_camera_benchmark", "--cameras", "0"),
                 ("sam3_ros.tools.endurance", "lifecycle", "--cycles", "0"),
                 ("sam3_ros.tools.stage_benchmark", "--width", "0"),
                 ("sam3_ros.tools.tracker_soak", "--report", "0"),
                 ("sam3_ros.tools.tracker_soak", "--model", str(tmp_path / "missing")),
                 ("sam3_ros.tools.demo", "--rate", "0"),
                 ("sam3_ros.tools.demo", "--frames", "0"),
                 ("sam3_ros.tools.quantization_report", "--model", str(tmp_path / "weights"),
                  "--json", str(tmp_path / "no" / "such" / "dir" / "r.json")),
                 ("sam3_ros.tools.quantization_report", "--model", str(tmp_path / "weights"),
                  "--json", str(tmp_path)),
                 ("sam3_ros.tools.make_tiny_checkpoint", str(tmp_path / "weights"))):
        done = _run(*args, timeout_s=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
        if "--json" in args:  # before the checkpoint (not one here) is even looked at
            assert "cannot write there" in done.stderr, done.stderr
    # A mistyped path to a real checkpoint does not get random weights.
    assert (tmp_path / "weights" / "model.safetensors").read_bytes() == b"real weights"


def test_benchmark_compares_the_node_with_the_same_backends_bare_call(tiny_checkpoint,
                                                                      tmp_path):
    # With --set backend=onnxruntime the bare core call ran torch while the node ran ONNX
    # Runtime; now both run the artifact, and the transformers call (torch) is left out.
    out = tmp_path / "artifacts"
    done = _run("sam3_ros.tools.export_backbone", "--model", str(tiny_checkpoint), "--out",
                str(out), "--precision", "fp32", "--check-frames", "1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    done = _run("sam3_ros.tools.benchmark", "--model", str(tiny_checkpoint), "--frames", "3",
                "--rate-seconds", "1", "--settle-ms", "50", "--set", "backend=onnxruntime",
                f"onnx_artifact_dir={out}", "onnx_threads=1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| bare call")]
    assert [r.split("|")[1].strip() for r in rows] == [
        "bare call, sam3_ros core (no ROS)",
        "bare call, sam3_ros core, back to back (tight loop)"], rows
    assert "vs transformers" not in done.stdout and "paired) vs the core path" in done.stdout


@pytest.mark.parametrize(("given", "name", "expected"), [
    ({}, "backend", "torch"), ({"backend": "onnxruntime"}, "backend", "onnxruntime"),
    ({"onnx_threads": "3"}, "onnx_threads", 3), ({"onnx_trt_fp16": "True"}, "onnx_trt_fp16", True),
    ({"onnx_trt_fp16": "false"}, "onnx_trt_fp16", False)])
def test_benchmark_reads_set_parameters_as_the_node_types_them(given, name, expected):
    from sam3_ros.tools.benchmark import node_param_reader

    value = node_param_reader(given)(name)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("given", [{"onnx_threads": "two"}, {"onnx_trt_fp16": "yes"}])
def test_benchmark_refuses_a_mistyped_set_parameter(given):
    from sam3_ros.tools.benchmark import node_param_reader

    with pytest.raises(ValueError):
        node_param_reader(given)(next(iter(given)))


def test_tracker_soak_reports_the_rate_of_each_lap(tiny_checkpoint):
    # The last, partial lap was divided by --report frames: 124.5 frames/s for 2.5.
    done = _run("sam3_ros.tools.tracker_soak", "--model", str(tiny_checkpoint), "--frames", "3",
                "--report", "500", "--width", "64", "--height", "48", timeout_s=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lap = float(re.search(r"frame      3: .*?, +([0-9.]+) frames/s", done.stdout).group(1))
    total = float(re.search(r"\(([0-9.]+) frames/s\)", done.stdout).group(1))
    assert lap == pytest.approx(total, rel=0.5), done.stdout
