"""Shared fixtures: the tiny random SAM3 checkpoint (built once per session, nothing downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Node tests talk over real DDS: keep them on this host and away from other test runs.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))


# Test tiers, by file, kept here so that test files need no edits. scripts/test.sh runs every
# tier on the main Python (3.11) and `-m "core or node"` on 3.10 and 3.12.
#   core:       no rclpy (numpy, torch, transformers; model parity, tracker, codecs)
#   conversion: message <-> numpy conversions (rclpy message types, no DDS)
#   node:       nodes, DDS transport, launch/config files checked against the nodes
#   compile:    real torch.compile (inductor) builds: minutes on a cold compile cache, so on
#               the main Python only
TEST_TIERS = {
    "test_benchmark_stats.py": "core",
    "test_cpu_latency.py": "core",
    "test_bytetrack.py": "core",
    "test_compute_thread.py": "core",
    "test_runtime.py": "core",
    "test_vision_features.py": "core",
    "test_position_encoding.py": "core",
    "test_detections.py": "core",
    "test_image_codec.py": "core",
    "test_output_buffer.py": "core",
    "test_mask_bits.py": "core",
    "test_model_loading.py": "core",
    "test_render.py": "core",
    "test_segmenter_core.py": "core",
    "test_preprocess.py": "core",
    "test_text_cache.py": "core",
    "test_lite_text.py": "core",
    "test_tracker_core.py": "core",
    "test_tracker_streaming.py": "core",
    "test_tracker_objects.py": "core",
    "test_camera_model.py": "core",
    "test_objects3d.py": "core",
    "test_input_limits.py": "core",
    "test_launch_plan.py": "core",
    "test_property_inputs.py": "core",
    "test_onnx_backbone.py": "core",
    "test_onnx_attention.py": "core",
    "test_stage_benchmark.py": "core",
    "test_torch_compile.py": "core",
    "test_detection_conversions.py": "conversion",
    "test_image_conversions.py": "conversion",
    "test_image_cdr.py": "conversion",
    "test_depth_conversions.py": "conversion",
    "test_fastdds_profile.py": "node",
    "test_launch_and_config.py": "node",
    "test_segmenter_node.py": "node",
    "test_text_encoder_node.py": "node",
    "test_tracker_node.py": "node",
    "test_depth_node.py": "node",
    "test_node_hardening.py": "node",
    "test_multi_camera.py": "node",
    "test_onnx_node.py": "node",
    "test_node_trace.py": "node",
    "test_tools_smoke.py": "node",
    "test_torch_compile_inductor.py": "compile",
    "test_compile_heads.py": "compile",
    "test_torch_int8_backbone.py": "compile",
    "test_torch_int8_node.py": "compile",
}
_TIER_HELP = {
    "core": "no rclpy (run on every Python by scripts/test.sh)",
    "conversion": "message conversions (main Python only in scripts/test.sh)",
    "node": "nodes over DDS, launch/config checks (run on every Python by scripts/test.sh)",
    "compile": "torch.compile/inductor builds, slow (main Python only in scripts/test.sh)",
}


def pytest_configure(config: pytest.Config) -> None:
    for tier, help_text in _TIER_HELP.items():
        config.addinivalue_line("markers", f"{tier}: {help_text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = TEST_TIERS.get(item.path.name)
        if tier is None:
            # Loud rather than silently left out of (or added to) the other Pythons' runs.
            raise pytest.UsageError(
                f"{item.path.name} has no test tier: add it to TEST_TIERS in test/conftest.py"
            )
        item.add_marker(tier)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Folder of a randomly initialised miniature SAM3 checkpoint (loads via from_pretrained)."""
    from sam3_ros.tools.make_tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_sam3"), seed=0)


@pytest.fixture(scope="session")
def calibration_frames_dir(tmp_path_factory) -> Path:
    """A folder of 3 png camera frames (synthetic, seeded; not the frames tests compare on)
    and a text file, for the torch_int8 backend's static calibration."""
    import cv2

    from sam3_ros.tools.export_backbone import synthetic_frames

    folder = tmp_path_factory.mktemp("calibration_frames")
    for i, rgb in enumerate(synthetic_frames(3, seed=7, height=120, width=160)):
        cv2.imwrite(str(folder / f"frame_{i}.png"), rgb[:, :, ::-1])
    (folder / "notes.txt").write_text("not an image")
    return folder
