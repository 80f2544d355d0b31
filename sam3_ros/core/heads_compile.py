"""`compile_heads`: `torch.compile` of the detector heads that compile as one graph each.

The SAM3 detector's heads run in torch whatever the backbone backend. Two of its three big
modules compile with `fullgraph=True` (one graph or an error, as `torch_compile`): the DETR
encoder (image tokens x prompt fusion, the largest) and the mask decoder (pixel decoder +
mask embedding). The DETR decoder does not (a data-dependent expression in its attention),
so it stays eager rather than being split at graph breaks.

Compiling is lazy in torch and specialises on input shapes, which vary with the prompts:
the prompt batch (1, or 2 and more) and the prompt sequence length (longer with box
exemplars). `prepare_heads` runs those cases once during configure, so that the shapes a
stream can give afterwards reuse a graph marked dynamic instead of compiling on a frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sam3_ros.core.errors import ModelLoadError

_log = logging.getLogger(__name__)

COMPILED_HEAD_MODULES = ("detr_encoder", "mask_decoder")
"""Attributes of the detector compiled by `compile_heads` (each one fullgraph)."""


def compile_heads(detector: Any) -> None:
    """Wrap the detector's `COMPILED_HEAD_MODULES` in `torch.compile(fullgraph=True)` in place.

    Every caller of the detector (segmenter, the tracker's detection) then runs them compiled;
    nothing compiles until the first call (see `prepare_heads`).

    Raises:
        ModelLoadError: the detector lacks one of the modules (another architecture).
    """
    missing = [name for name in COMPILED_HEAD_MODULES if not hasattr(detector, name)]
    if missing:
        raise ModelLoadError(f"compile_heads: {type(detector).__name__} has no {missing} "
                             f"(expected a SAM3 detector with {list(COMPILED_HEAD_MODULES)})")
    import torch

    for name in COMPILED_HEAD_MODULES:
        getattr(detector, name).compile(fullgraph=True)
    # Both modules' forwards are one code object (transformers' output-capturing wrapper), and
    # torch's recompile limit (8) counts graphs per code object: the 8 prepared ones reach it,
    # and past it a fullgraph module raises, i.e. a new prompt shape would fail its frame.
    # Compiling it on that frame (slow, once) is the lesser evil.
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(64, getattr(config, limit)))


def heads_compiled(detector: Any) -> bool:
    """Whether `compile_heads` wrapped this detector's heads."""
    return all(getattr(getattr(detector, name, None), "_compiled_call_impl", None) is not None
               for name in COMPILED_HEAD_MODULES)


def warmup_prompt_sets(image_size: int) -> list[tuple[str, list[Any]]]:
    """The prompt sets whose shapes `prepare_heads` compiles, with a name for the log.

    Text only and with box exemplars, one prompt and two (two exemplars): the batch and the
    prompt length each change once, so torch marks them dynamic and the last two graphs serve
    any prompt count and exemplar count.
    """
    from sam3_ros.core.prompts import BoxExemplar, PromptSpec

    quarter, half = image_size / 4.0, image_size / 2.0
    box_a = BoxExemplar(quarter, quarter, half, half)
    box_b = BoxExemplar(half, half, 3 * quarter, 3 * quarter, positive=False)
    return [
        ("1 text prompt", [PromptSpec("object")]),
        ("2 text prompts", [PromptSpec("object"), PromptSpec("thing")]),
        ("1 prompt with a box", [PromptSpec("object", (box_a,))]),
        ("2 prompts with boxes", [PromptSpec("object", (box_a, box_b)),
                                  PromptSpec("thing", (box_b,))]),
    ]


def prepare_heads(segmenter: Any, vision_embeds: Any, image_size: int,
                  log: Callable[[str], None] | None = None) -> None:
    """Compile the heads for every prompt shape a stream can give (see `warmup_prompt_sets`).

    Args:
        segmenter: A `Sam3Segmenter` on the model whose heads `compile_heads` wrapped.
        vision_embeds: Features of one (image_size x image_size) frame, from the model's own
            backbone path (compiled graphs guard on how their inputs were made).
        image_size: Side of that frame in pixels.
        log: Progress lines (one per prompt set, with its time).

    Raises:
        ModelLoadError: a compile failed, with torch's reason (no fallback to eager).
    """
    from sam3_ros.core.backbone import _short_reason, strict_compile_config
    from sam3_ros.core.segmenter import SegmenterConfig

    log = log or _log.info
    config = SegmenterConfig(score_threshold=1.0)
    started = time.monotonic()
    log(f"compile_heads: compiling the detector's {', '.join(COMPILED_HEAD_MODULES)} for "
        f"text and box prompts (can take minutes; the DETR decoder stays eager)")
    for name, specs in warmup_prompt_sets(image_size):
        step_started = time.monotonic()
        try:
            prompts = segmenter.encode_prompts(specs)
            with strict_compile_config():
                segmenter.segment_features(vision_embeds, prompts, config, image_size,
                                           image_size)
        except Exception as err:
            raise ModelLoadError(f"compile_heads: compiling the detector heads for {name} "
                                 f"failed: {_short_reason(err)}") from err
        log(f"compile_heads: {name} ready in {time.monotonic() - step_started:.1f} s")
    log(f"compile_heads: detector heads compiled in {time.monotonic() - started:.1f} s")
