"""Detector prompts: validation of text phrases and box exemplars (pure, no torch)."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sam3_ros.core.errors import InvalidPromptError

MAX_PROMPT_CHARS = 200
"""Longest accepted prompt text; SAM3's text encoder reads at most 32 tokens anyway."""
MAX_PROMPT_INPUT_CHARS = 4096
"""Longest prompt text accepted before its whitespace is collapsed (a request of megabytes of
"a a a ..." would otherwise be split into millions of strings first)."""
MAX_EXEMPLARS_PER_PROMPT = 32
"""Most box exemplars of one prompt (SAM3's geometry encoder attends over all of them per
frame; thousands made every frame take seconds)."""


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
        if len(prompt.text) > MAX_PROMPT_INPUT_CHARS:
            raise InvalidPromptError(f"prompt {i} has {len(prompt.text)} characters, at most "
                                     f"{MAX_PROMPT_INPUT_CHARS} allowed (and {MAX_PROMPT_CHARS} "
                                     "once whitespace runs are collapsed)")
        text = " ".join(prompt.text.split())
        if not text and not prompt.exemplars:
            raise InvalidPromptError(f"prompt {i} is empty (give a text or exemplar boxes)")
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidPromptError(
                f"prompt {i} has {len(text)} characters, at most {MAX_PROMPT_CHARS} allowed")
        if len(prompt.exemplars) > MAX_EXEMPLARS_PER_PROMPT:
            raise InvalidPromptError(
                f"prompt {i} has {len(prompt.exemplars)} exemplar boxes, at most "
                f"{MAX_EXEMPLARS_PER_PROMPT} allowed")
        for j, box in enumerate(prompt.exemplars):
            check_box(box.xyxy, f"prompt {i} exemplar box {j}", image_size_hw)
        # What the model reads: the CLIP tokenizer lowercases and NFC-normalises ("café" typed
        # with a combining accent is "café"), and a box-only prompt reads "visual".
        key = (unicodedata.normalize("NFC", text or "visual").lower(), prompt.exemplars)
        if key in seen:
            raise InvalidPromptError(f"prompt {i} ('{text}') duplicates prompt {seen[key]}")
        seen[key] = i
        result.append(PromptSpec(text, tuple(prompt.exemplars)))
    return tuple(result)


def exemplar_arrays(prompts: Sequence[PromptSpec],
                    image_size_hw: tuple[int, int] | None = None,
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Pack exemplar boxes of a prompt chunk for SAM3's geometry encoder.

    Args:
        prompts: The prompts of one decoder batch.
        image_size_hw: (height, width) of the frame: boxes are clipped to it, and a box left
            empty (entirely outside this frame, e.g. after the camera changed resolution) is
            ignored on this frame rather than failing it.

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
    if image_size_hw is not None:
        height, width = image_size_hw
        np.clip(boxes[..., 0::2], 0, width, out=boxes[..., 0::2])
        np.clip(boxes[..., 1::2], 0, height, out=boxes[..., 1::2])
        empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
        labels[empty] = -10
        boxes[empty] = 0.0
    return boxes, labels


def format_prompt_boxes(prompts: Sequence[PromptSpec]) -> list[str]:
    """The exemplar boxes of a prompt set as `prompt_boxes` parameter items.

    Each item is "<prompt index> <x_min> <y_min> <x_max> <y_max> <+|->" (pixels, xyxy;
    + positive, - negative), so `ros2 param dump` saves a prompt set `parse_prompt_boxes`
    restores. [""] when no prompt has boxes (ROS cannot type an empty list).
    """
    items = [f"{i} {_number(b.x_min)} {_number(b.y_min)} {_number(b.x_max)} {_number(b.y_max)} "
             f"{'+' if b.positive else '-'}"
             for i, prompt in enumerate(prompts) for b in prompt.exemplars]
    return items or [""]


def _number(value: float) -> str:
    """The shortest text that parses back to exactly `value` ("10", "0.1", "1000.121").

    `:g` kept 6 digits: a narrow box saved as an empty one and two boxes that differ past
    the sixth digit as duplicates, both refused when the parameters were read back.
    """
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def parse_prompt_boxes(texts: Sequence[str], items: Sequence[str]) -> list[PromptSpec]:
    """Prompt set from the `prompts` (one text per class) and `prompt_boxes` parameters.

    Raises:
        InvalidPromptError: a malformed item or a prompt index outside `texts`.
    """
    exemplars: list[list[BoxExemplar]] = [[] for _ in texts]
    for item in items:
        if not item.strip():
            continue
        fields = item.split()
        if len(fields) != 6 or fields[5] not in ("+", "-"):
            raise InvalidPromptError(
                f"prompt_boxes item {item!r}: expected '<prompt index> <x_min> <y_min> <x_max> "
                f"<y_max> <+|->'")
        try:
            index = int(fields[0])
            x_min, y_min, x_max, y_max = (float(v) for v in fields[1:5])
        except ValueError as err:
            raise InvalidPromptError(f"prompt_boxes item {item!r}: {err}") from None
        if not 0 <= index < len(texts):
            raise InvalidPromptError(
                f"prompt_boxes item {item!r}: prompt index {index} is not one of the "
                f"{len(texts)} prompts")
        exemplars[index].append(BoxExemplar(x_min, y_min, x_max, y_max, fields[5] == "+"))
    return [PromptSpec(text, tuple(boxes)) for text, boxes in zip(texts, exemplars, strict=True)]
