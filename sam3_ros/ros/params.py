"""Parameter declarations: one table per node, declared once, validated live.

The defaults here equal `config/<node>.yaml` (a test checks both ways), so `ros2 run` without a
parameter file and `ros2 launch` with it behave the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sam3_ros.core.backbone import BACKENDS, TORCH_COMPILE_MODES
from sam3_ros.core.onnx_backbone import PRECISIONS, PROVIDERS
from sam3_ros.core.preprocess import PREPROCESS_MODES
from sam3_ros.core.torch_int8_backbone import DEFAULT_CALIBRATION_FRAMES, MAX_CALIBRATION_FRAMES

MAX_STRING_CHARS = 4096
"""Longest string parameter (and string-array item) accepted."""
MAX_LIST_ITEMS = 1024
"""Most items in a string-array parameter."""


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter.

    Attributes:
        name: Parameter name.
        default: Default value; its Python type fixes the ROS type (list[str] -> string array).
        description: Shown by `ros2 param describe`.
        reload: True if a change needs the model reloaded (cleanup + configure); such changes
            are refused while the node is configured, with a reason saying so.
        choices: Allowed values (strings), if restricted.
        min_value / max_value: Inclusive numeric range, if restricted.
    """

    name: str
    default: Any
    description: str
    reload: bool = False
    choices: tuple[str, ...] | None = None
    min_value: float | None = None
    max_value: float | None = None

    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """Convert a value given with a near-miss type to the declared one.

        A single string where a list of strings is declared (`prompts:=person` from a launch
        file or `-p`) becomes a one-element list; an integer where a float is declared
        (`score_threshold:=1`) becomes a float. Anything else of the wrong type is refused.

        Returns:
            (value, None) on success, or (None, reason).
        """
        kind = type(self.default)
        if kind is list:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                return None, (f"{self.name} must be a list of strings, e.g. \"[a, b]\", got "
                              f"{value!r}")
            return list(value), None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value), None
        if type(value) is not kind:
            return None, (f"{self.name} must be of type {kind.__name__}, got {value!r} "
                          f"({type(value).__name__})")
        return value, None

    def check(self, value: Any) -> str | None:
        """Return why `value` is invalid, or None when it is valid."""
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            return f"{self.name} is longer than {MAX_STRING_CHARS} characters"
        if isinstance(value, list):
            if len(value) > MAX_LIST_ITEMS:
                return f"{self.name} has {len(value)} items, at most {MAX_LIST_ITEMS} allowed"
            if any(len(v) > MAX_STRING_CHARS for v in value):
                return f"{self.name}: an item is longer than {MAX_STRING_CHARS} characters"
        if self.choices is not None and value not in self.choices:
            return f"{self.name} must be one of {list(self.choices)}, got '{value}'"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{self.name} must be finite, got {value}"
        if self.min_value is not None and value < self.min_value:
            return f"{self.name} must be >= {self.min_value}, got {value}"
        if self.max_value is not None and value > self.max_value:
            return f"{self.name} must be <= {self.max_value}, got {value}"
        return None


MODEL_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model", "facebook/sam3",
              "Hugging Face id or local checkpoint folder of a SAM3 checkpoint", reload=True),
    ParamSpec("device", "auto", "cpu, cuda, cuda:N or auto (cuda when available)", reload=True),
    ParamSpec("dtype", "float32", "Weights/activations dtype", reload=True,
              choices=("float32", "float16", "bfloat16")),
    ParamSpec("quantization", "none",
              "torchao weight quantisation: none, int8_weight_only, int8_dynamic, nvfp4 "
              "(nvfp4 needs a Blackwell GPU)", reload=True,
              choices=("none", "int8_weight_only", "int8_dynamic", "nvfp4")),
    ParamSpec("backend", "torch",
              "Vision backbone implementation (the text encoder and heads stay in torch): "
              "torch; onnxruntime (onnx_* parameters); torch_int8 (x86 CPU only: the ViT's "
              "linears INT8 via torchao PT2E, compiled during configure, minutes at full size)",
              reload=True, choices=BACKENDS),
    ParamSpec("torch_compile", "none",
              "backend torch: torch.compile mode of the vision backbone (compiled during "
              "configure, for every batch size the runtime can use; a failed compile fails "
              "configure); the detector heads: compile_heads. Other backends: must be none",
              reload=True, choices=TORCH_COMPILE_MODES),
    ParamSpec("torch_int8_calibration", "",
              "backend torch_int8: folder of png/jpeg frames from your camera; set, the "
              "activations are quantised statically with ranges calibrated on them (faster "
              "than dynamic; one fp32 ViT pass per frame in configure); '' = dynamic. Other "
              "backends: must be ''", reload=True),
    ParamSpec("torch_int8_calibration_frames", DEFAULT_CALIBRATION_FRAMES,
              "backend torch_int8 with torch_int8_calibration: how many of the folder's "
              "images (sorted by name) to calibrate on", reload=True, min_value=1,
              max_value=MAX_CALIBRATION_FRAMES),
    ParamSpec("compile_heads", False,
              "torch.compile (fullgraph) of the detector's DETR encoder and mask decoder, any "
              "backend: compiled during configure for text and box prompts (minutes at full "
              "size; a failed compile fails configure); the DETR decoder stays eager",
              reload=True),
    ParamSpec("onnx_artifact_dir", "",
              "backend onnxruntime: folder of backbones exported by "
              "`python -m sam3_ros.tools.export_backbone`; the one keyed to the loaded "
              "checkpoint, image size, onnx_precision and onnxruntime version is used",
              reload=True),
    ParamSpec("onnx_precision", "fp32", "backend onnxruntime: artifact precision",
              reload=True, choices=PRECISIONS),
    ParamSpec("onnx_provider", "cpu",
              "backend onnxruntime: execution provider (an unavailable one fails configure)",
              reload=True, choices=tuple(PROVIDERS)),
    ParamSpec("onnx_threads", 0, "backend onnxruntime: intra-op threads (0 = ORT default)",
              reload=True, min_value=0, max_value=1024),
    ParamSpec("onnx_trt_cache_dir", "",
              "onnx_provider tensorrt: engine cache folder ('' = no cache)", reload=True),
    ParamSpec("onnx_trt_fp16", False, "onnx_provider tensorrt: allow FP16 kernels",
              reload=True),
    ParamSpec("onnx_trt_int8", False, "onnx_provider tensorrt: allow INT8 kernels",
              reload=True),
    ParamSpec("warmup", True, "Run one inference during configure so the first frame is fast",
              reload=True),
    ParamSpec("preprocessing", "auto",
              "Resize + normalise: device = torch ops on the model's device from the uint8 frame "
              "(only the bytes are uploaded to a GPU); processor = transformers' processor on "
              "the CPU; auto = device unless the processor has a setting it does not reproduce",
              reload=True, choices=PREPROCESS_MODES),
    ParamSpec("text_cache_dir", "",
              "Folder caching prompt text embeddings across restarts and prompt switches "
              "(e.g. ~/.cache/sam3_ros/text_embeddings); '' = off", reload=True),
)

IO_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("input_kind", "raw",
              "raw: subscribe to `image` (sensor_msgs/Image); compressed: to `image/compressed`",
              choices=("raw", "compressed"), reload=True),
    ParamSpec("publish_masks", True, "Include cropped instance masks in `detections`"),
    ParamSpec("publish_mask_image", True, "Publish the instance-id label image on `mask`"),
    ParamSpec("publish_overlay", True, "Publish the debug overlay image on `overlay`"),
    ParamSpec("publish_vision_msgs", True,
              "Publish vision_msgs/Detection2DArray on `vision_detections` (when installed)"),
    ParamSpec("overlay_alpha", 0.5, "Mask opacity in the overlay", min_value=0.0, max_value=1.0),
    ParamSpec("overlay_boxes", True, "Draw boxes in the overlay"),
    ParamSpec("overlay_labels", True, "Draw labels and scores in the overlay"),
    ParamSpec("autostart", False,
              "Configure and activate at startup (for `ros2 run` without a lifecycle manager)",
              reload=True),
    ParamSpec("max_image_pixels", 16_777_216,
              "Largest accepted input image (width x height), checked before decoding or "
              "converting it; bounds the memory of every per-frame buffer (masks: "
              "instances x pixels bytes)", min_value=1, max_value=268_435_456),
)

# 3D outputs (sam3_ros.ros.depth_outputs): depth registered to the colour image + CameraInfo.
DEPTH_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("depth_enabled", False,
              "Subscribe to `depth` (registered to the colour image) and `camera_info` and "
              "publish 3D outputs", reload=True),
    ParamSpec("depth_rectified", False,
              "Images are rectified (image_rect): use CameraInfo P, no distortion; false: "
              "K and D of the raw image"),
    ParamSpec("depth_scale", 0.0,
              "Metres per depth unit; 0 = by encoding (16UC1/mono16 millimetres, 32FC1 metres)",
              min_value=0.0, max_value=1000.0),
    ParamSpec("min_depth", 0.1, "Nearest valid depth (m)", min_value=0.001, max_value=1000.0),
    ParamSpec("max_depth", 10.0, "Farthest valid depth (m)", min_value=0.01,
              max_value=1000.0),
    ParamSpec("depth_max_dt", 0.02,
              "Largest |depth stamp - colour stamp| (s) for a pair; else no 3D that frame",
              min_value=0.0, max_value=10.0),
    ParamSpec("depth_erode_px", 2,
              "Mask erosion (depth pixels) before reading depth, against background bleed",
              min_value=0, max_value=50),
    ParamSpec("depth_outlier_k", 3.0,
              "Reject depth farther than k robust sigmas (MAD) from the median; 0 = off",
              min_value=0.0, max_value=100.0),
    ParamSpec("box_percentile", 1.0,
              "3D boxes span the [p, 100 - p] percentiles of the points; 0 = min/max",
              min_value=0.0, max_value=49.0),
    ParamSpec("min_points", 20, "Depth points needed for a valid 3D object", min_value=1,
              max_value=1000000),
    ParamSpec("max_object_points", 2000,
              "Larger objects are sampled on a pixel grid down to about this many points "
              "(at least 4 x min_points)",
              min_value=10, max_value=1000000),
    ParamSpec("publish_points", True, "Publish the objects' points on `points` (PointCloud2)"),
    ParamSpec("points_stride", 2, "Point spacing of `points` in depth pixels", min_value=1,
              max_value=64),
    ParamSpec("publish_markers", True, "Publish RViz boxes and labels on `markers`"),
)


def spec_table(*groups: Sequence[ParamSpec]) -> dict[str, ParamSpec]:
    """Merge parameter groups into a name -> spec table (names must be unique)."""
    table: dict[str, ParamSpec] = {}
    for group in groups:
        for spec in group:
            if spec.name in table:
                raise ValueError(f"parameter '{spec.name}' declared twice")
            table[spec.name] = spec
    return table


ROS_OWN_PARAMS = frozenset({"use_sim_time", "start_type_description_service"})
"""Parameters rclpy declares on every node (`qos_overrides.*` too, by prefix)."""


def unknown_parameters(given: Iterable[str], known: Iterable[str]) -> list[str]:
    """Parameter overrides (params file, `-p`) that no node of this package declares, each
    with the closest known name when there is one: rclpy drops such overrides without a word,
    so a typo (`score_treshold`) would leave the default in force unnoticed.

    Args:
        given: Names of the overrides a node received.
        known: Every parameter name of the package's nodes (a file keyed `/**` also reaches
            the other kind of node: its parameters are not unknown).

    Returns:
        One line per unknown name, sorted: "'name'" or "'name' (did you mean 'other'?)".
    """
    import difflib

    known = sorted(set(known))
    lines = []
    for name in sorted(set(given) - set(known) - ROS_OWN_PARAMS):
        if name.startswith("qos_overrides."):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        lines.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return lines
