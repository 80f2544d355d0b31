"""Detector prompts: validation of text phrases and box exemplars (pure, no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sam3_ros.core.errors import InvalidPromptError

MAX_PROMPT_CHARS = 200
"""Longest accepted prompt text; SAM3's text encoder reads at most 32 tokens anyway."""


@dataclass(frozen=True)
class BoxExemplar:
    """A box exemplar in pixel coordinates of the input image (xyxy) and its polarity."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    positive: bool = True

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)


@dataclass(frozen=True)
class PromptSpec:
    """One detector class: a text phrase and/or box exemplars.

    Attributes:
        text: The phrase ("" for a box-only prompt; SAM3 then reads the text "visual").
        exemplars: Box exemplars guiding the detector (pooled from each frame they apply to).
    """

    text: str
    exemplars: tuple[BoxExemplar, ...] = field(default=())

    @property
    def label(self) -> str:
        """Human-readable class name (the text, or a description of the exemplars)."""
        return self.text or f"<{len(self.exemplars)} box exemplar(s)>"

    @property
    def model_text(self) -> str:
        # SAM3's processor uses this placeholder phrase for prompts that have only boxes.
        return self.text or "visual"


def check_box(xyxy: Sequence[float], what: str, image_size_hw: tuple[int, int] | None) -> None:
    """Raise InvalidPromptError unless `xyxy` is a finite, non-empty box inside the image.

    Args:
        xyxy: (x_min, y_min, x_max, y_max) in pixels.
        what: Name used in the error message, e.g. "prompt 2 box 0".
        image_size_hw: (height, width) of the image the box refers to, or None if unknown.
    """
    if len(xyxy) != 4 or not all(math.isfinite(float(v)) for v in xyxy):
        raise InvalidPromptError(f"{what}: box must be 4 finite numbers, got {list(xyxy)}")
    x_min, y_min, x_max, y_max = (float(v) for v in xyxy)
    if x_max <= x_min or y_max <= y_min:
        raise InvalidPromptError(
            f"{what}: box {list(xyxy)} is empty (need x_max > x_min and y_max > y_min)")
    if image_size_hw is not None:
        height, width = image_size_hw
        if x_min < 0 or y_min < 0 or x_max > width or y_max > height:
            raise InvalidPromptError(
                f"{what}: box {list(xyxy)} is outside the {width}x{height} image")


def check_point(xy: Sequence[float], what: str, image_size_hw: tuple[int, int] | None) -> None:
    """Raise InvalidPromptError unless `xy` is a finite point inside the image."""
    if len(xy) != 2 or not all(math.isfinite(float(v)) for v in xy):
        raise InvalidPromptError(f"{what}: point must be 2 finite numbers, got {list(xy)}")
    if image_size_hw is not None:
        height, width = image_size_hw
        x, y = float(xy[0]), float(xy[1])
        if not (0 <= x < width and 0 <= y < height):
            raise InvalidPromptError(
                f"{what}: point ({x}, {y}) is outside the {width}x{height} image")


def validate_prompts(
    prompts: Sequence[PromptSpec],
    max_prompts: int,
    image_size_hw: tuple[int, int] | None = None,
) -> tuple[PromptSpec, ...]:
    """Validate a full prompt set and return it normalised (texts stripped).

    Args:
        prompts: The prompts, in class-id order.
        max_prompts: Largest accepted number of prompts.
        image_size_hw: Size of the stream's images, when known, to check exemplar boxes.

    Raises:
        InvalidPromptError: empty set, too many prompts, an empty/too long/duplicate text, or an
            invalid exemplar box; the message names the prompt.
    """
    if not prompts:
        raise InvalidPromptError("at least one prompt is required")
    if len(prompts) > max_prompts:
        raise InvalidPromptError(f"{len(prompts)} prompts given, at most {max_prompts} allowed "
                                 "(parameter max_prompts)")
    seen: dict[tuple, int] = {}
    result = []
    for i, prompt in enumerate(prompts):
        text = " ".join(prompt.text.split())
        if not text and not prompt.exemplars:
            raise InvalidPromptError(f"prompt {i} is empty (give a text or exemplar boxes)")
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidPromptError(
                f"prompt {i} has {len(text)} characters, at most {MAX_PROMPT_CHARS} allowed")
        for j, box in enumerate(prompt.exemplars):
            check_box(box.xyxy, f"prompt {i} exemplar box {j}", image_size_hw)
        key = (text.lower(), prompt.exemplars)
        if key in seen:
            raise InvalidPromptError(f"prompt {i} ('{text}') duplicates prompt {seen[key]}")
        seen[key] = i
        result.append(PromptSpec(text, tuple(prompt.exemplars)))
    return tuple(result)


def exemplar_arrays(prompts: Sequence[PromptSpec]) -> tuple[np.ndarray, np.ndarray] | None:
    """Pack exemplar boxes of a prompt chunk for SAM3's geometry encoder.

    Returns:
        None when no prompt has exemplars; else (boxes_xyxy (P, K, 4) float32 in pixels,
        labels (P, K) int64 with 1 positive, 0 negative, -10 padding), K = most exemplars.
    """
    most = max((len(p.exemplars) for p in prompts), default=0)
    if most == 0:
        return None
    boxes = np.zeros((len(prompts), most, 4), np.float32)
    labels = np.full((len(prompts), most), -10, np.int64)
    for i, prompt in enumerate(prompts):
        for j, box in enumerate(prompt.exemplars):
            boxes[i, j] = box.xyxy
            labels[i, j] = 1 if box.positive else 0
    return boxes, labels
