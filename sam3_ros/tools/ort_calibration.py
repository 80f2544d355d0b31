"""MinMax calibration of an ONNX graph in parts, so that int8-static fits a 24 GB machine.

onnxruntime's `quantize_static` calibrates every tensor it will quantise in one run of an
augmented graph (a ReduceMin and a ReduceMax per tensor added as graph outputs). At the
full-size SAM3 backbone that run held ~13 GB more than the plain graph's (measured here:
peak RSS 16.0 GB for one 1008 px frame against 2.8 GB for the plain fp32 graph; 7.2 GB with a
quarter of the tensors calibrated), and the export was killed at 24 GB. This module runs the
same calibrator on one part of the tensors at a time (every part sees every frame) and
merges the ranges: a tensor's min and max are the same whichever part computes them, so the
result equals the one-run calibration (tested). `quantize_static` then reads the ranges
from its calibration cache (`calibration_cache_path`, onnxruntime >= 1.32) and calibrates
nothing itself.

The one place in the package that reaches into onnxruntime's calibrator: a subclass of
`MinMaxCalibrater` that narrows `select_tensors_to_calibrate`.
"""

from __future__ import annotations

import gc
import inspect
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam3_ros.core.errors import ModelLoadError

__all__ = ["calibrate_min_max", "supports_calibration_cache", "write_calibration_cache"]


def supports_calibration_cache() -> bool:
    """Whether this onnxruntime's `quantize_static` takes precomputed ranges."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _part_calibrater(part: int, parts: int) -> type:
    from onnxruntime.quantization.calibrate import MinMaxCalibrater

    class PartCalibrater(MinMaxCalibrater):
        """Calibrates every `parts`-th tensor (by name) of those the quantiser would."""

        def select_tensors_to_calibrate(self, model: Any) -> tuple[set[str], dict]:
            tensors, value_infos = super().select_tensors_to_calibrate(model)
            return set(sorted(tensors)[part::parts]), value_infos

    return PartCalibrater


def calibrate_min_max(fp32_path: Path, frames: Sequence[dict[str, np.ndarray]],
                      op_types: Sequence[str], parts: int,
                      log: Callable[[str], None] = lambda _: None) -> Any:
    """MinMax ranges of the tensors `quantize_static` calibrates for `op_types`, in `parts`.

    Args:
        fp32_path: The fp32 graph (external data beside it).
        frames: Calibration inputs, e.g. [{"pixel_values": (1, 3, S, S) float32}].
        op_types: The op types to quantise (as given to `quantize_static`).
        parts: How many runs the tensors are split over (peak memory falls with it; every
            part runs every frame).
        log: Progress lines.

    Returns:
        onnxruntime's `TensorsData` (MinMax), as its own calibrator would compute it.

    Raises:
        ModelLoadError: no frames, or `parts` < 1.
    """
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        TensorsData,
    )

    if not frames:
        raise ModelLoadError("int8-static needs calibration frames (--calibration-frames)")
    if parts < 1:
        raise ModelLoadError(f"calibration parts must be >= 1, got {parts}")

    class Reader(CalibrationDataReader):
        def __init__(self, label: str) -> None:
            self._items = iter(frames)
            self._index = 0
            self._label = label

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            if item is not None:
                self._index += 1
                log(f"calibration {self._label}, frame {self._index}/{len(frames)}")
            return item

    ranges: dict[str, Any] = {}
    for part in range(parts):
        with tempfile.TemporaryDirectory(prefix="sam3_calibration_") as tmp:
            calibrater = _part_calibrater(part, parts)(
                str(fp32_path), list(op_types),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                use_external_data_format=True)
            calibrater.augment_graph()
            calibrater.create_inference_session()
            calibrater.collect_data(Reader(f"part {part + 1}/{parts}"))
            found = calibrater.compute_data()
            if found is not None:
                ranges.update(found.data)
            # The augmented graph's session and proto hold gigabytes at full size: gone
            # before the next part builds its own.
            del calibrater, found
            gc.collect()
    return TensorsData(CalibrationMethod.MinMax, ranges)


def write_calibration_cache(tensors: Any, path: Path) -> None:
    """Write ranges where `quantize_static(calibration_cache_path=...)` reads them."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(tensors, path)
