"""`segmenter`: SAM3 text-prompted detection and instance segmentation on a camera topic.

Topics (the input is relative: remap it; outputs are private to the node, `~/...`):
    sub  image (sensor_msgs/Image) or image/compressed (sensor_msgs/CompressedImage)
    pub  ~/detections (sam3_ros/DetectionArray), ~/vision_detections
         (vision_msgs/Detection2DArray, when vision_msgs is installed), ~/mask (sensor_msgs/Image,
         instance-id label image), ~/overlay (sensor_msgs/Image, rgb8), ~/label_info
         (sam3_ros/LabelInfo, transient local), /diagnostics
Services:
    ~/set_prompts (sam3_ros/SetPrompts), ~/reset (std_srvs/Trigger: restarts tracking ids)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from std_srvs.srv import Trigger

from sam3_ros.core.bytetrack import ByteTrackConfig, ByteTracker
from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import ConfigError, InvalidPromptError
from sam3_ros.core.model_hub import ModelHub, SharedModel
from sam3_ros.core.prompts import (
    MAX_EXEMPLARS_PER_PROMPT,
    BoxExemplar,
    PromptSpec,
    format_prompt_boxes,
    parse_prompt_boxes,
)
from sam3_ros.core.segmenter import KEEP, Sam3Segmenter, SegmenterConfig, SegmenterSession
from sam3_ros.ros.base_node import Sam3LifecycleNode, node_main
from sam3_ros.ros.params import (
    DEPTH_PARAMS,
    IO_PARAMS,
    MAX_LIST_ITEMS,
    MODEL_PARAMS,
    ParamSpec,
    spec_table,
)
from sam3_ros.srv import SetPrompts

SEGMENTER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("prompts", ["person"],
              "Text prompts, one class each (class id = index; '' for a box-only prompt); "
              "live, and kept equal to what set_prompts sets"),
    ParamSpec("prompt_boxes", [""],
              "Box exemplars of the prompts: items '<prompt index> <x_min> <y_min> <x_max> "
              "<y_max> <+|->' (pixels); [''] = none. Live, kept equal to set_prompts"),
    ParamSpec("score_threshold", 0.5, "Keep instances scoring above this", min_value=0.0,
              max_value=1.0),
    ParamSpec("mask_threshold", 0.5, "Binarise mask probabilities above this", min_value=0.0,
              max_value=1.0),
    ParamSpec("max_detections", 100, "Most instances per frame (highest scores)", min_value=1,
              max_value=10000),
    ParamSpec("max_mask_memory_mb", 1024,
              "Most memory (MiB) one frame's full-size masks may take (1 byte per pixel per "
              "instance); fewer than max_detections are kept beyond it (diagnostics: "
              "frames_at_mask_memory_cap)", min_value=1, max_value=65536),
    ParamSpec("max_prompts", 64, "Largest accepted prompt set", min_value=1, max_value=1024),
    ParamSpec("prompts_per_batch", 16,
              "Prompts decoded together; the backbone runs once per frame regardless",
              min_value=1, max_value=1024),
    ParamSpec("track_ids", False,
              "ByteTrack-style association: object_id persists across frames"),
    ParamSpec("track_high_score", 0.5, "ByteTrack first-stage score threshold", min_value=0.0,
              max_value=1.0),
    ParamSpec("track_low_score", 0.1, "ByteTrack second-stage score threshold", min_value=0.0,
              max_value=1.0),
    ParamSpec("track_new_score", 0.6, "ByteTrack score needed to start a track", min_value=0.0,
              max_value=1.0),
    ParamSpec("track_max_lost_frames", 30, "ByteTrack frames a lost track is kept",
              min_value=0, max_value=100000),
)

PARAMS = spec_table(MODEL_PARAMS, IO_PARAMS, SEGMENTER_PARAMS, DEPTH_PARAMS)

_SEGMENTER_CONFIG_PARAMS = ("score_threshold", "mask_threshold", "max_detections",
                            "max_prompts", "prompts_per_batch", "max_mask_memory_mb")
_TRACK_PARAMS = ("track_ids", "track_high_score", "track_low_score", "track_new_score",
                 "track_max_lost_frames")


def prompt_specs_from_msgs(texts: list[str], prompts: list[Any],
                           max_prompts: int) -> list[PromptSpec]:
    """SetPrompts request fields -> PromptSpecs (texts first, then full prompts).

    Sizes are checked before anything is built from them (a request may carry thousands).

    Raises:
        InvalidPromptError: more than max_prompts prompts or too many boxes in one.
    """
    if len(texts) + len(prompts) > max_prompts:
        raise InvalidPromptError(f"{len(texts) + len(prompts)} prompts given, at most "
                                 f"{max_prompts} allowed (parameter max_prompts)")
    for i, prompt in enumerate(prompts):
        if len(prompt.exemplar_boxes) > MAX_EXEMPLARS_PER_PROMPT:
            raise InvalidPromptError(
                f"prompt {len(texts) + i} has {len(prompt.exemplar_boxes)} exemplar boxes, at "
                f"most {MAX_EXEMPLARS_PER_PROMPT} allowed")
    specs = [PromptSpec(text) for text in texts]
    for prompt in prompts:
        exemplars = tuple(BoxExemplar(b.x_min, b.y_min, b.x_max, b.y_max, bool(b.positive))
                          for b in prompt.exemplar_boxes)
        specs.append(PromptSpec(prompt.text, exemplars))
    return specs


class SegmenterNode(Sam3LifecycleNode):
    """Lifecycle node running SAM3 text/box-exemplar prompted instance segmentation."""

    def __init__(self, node_name: str = "segmenter", *, model_hub: ModelHub | None = None,
                 **kwargs: Any):
        super().__init__(node_name, PARAMS, model_hub=model_hub, **kwargs)
        self._session: SegmenterSession | None = None
        self._mask_cap_base: tuple[SegmenterSession | None, int] = (None, 0)

    # ---------------------------------------------------------------------------- session
    def _segmenter_config(self, **override: Any) -> SegmenterConfig:
        values = {name: self.param(name) for name in _SEGMENTER_CONFIG_PARAMS}
        values.update(override)
        return SegmenterConfig(**values)

    def _bytetracker(self, **override: Any) -> ByteTracker | None:
        values = {name: self.param(name) for name in _TRACK_PARAMS}
        values.update(override)
        # Checked only with tracking on: stages set one by one (ros2 param load applies them
        # alphabetically) would otherwise be refused on the way to a consistent set.
        if not values["track_ids"]:
            return None
        return ByteTracker(ByteTrackConfig(
            high_score_threshold=values["track_high_score"],
            low_score_threshold=values["track_low_score"],
            new_track_threshold=values["track_new_score"],
            max_lost_frames=values["track_max_lost_frames"]))

    def _create_session(self, model: SharedModel) -> None:
        segmenter = Sam3Segmenter(model.loaded, model.feature_cache,
                                  preprocessing=self.param("preprocessing"),
                                  text_cache=self._text_cache())
        self.get_logger().info(f"preprocessing: {segmenter.preprocessing}")
        prompts = parse_prompt_boxes(self.param("prompts"), self.param("prompt_boxes"))
        self._session = SegmenterSession(segmenter, self._segmenter_config(), prompts,
                                         tracker=self._bytetracker())

    def _release_session(self) -> None:
        self._session = None
        # The baseline must not keep the session, and with it the model, alive after cleanup.
        self._mask_cap_base = (None, 0)

    def _reset_counters(self) -> None:
        super()._reset_counters()
        # A baseline rather than a reset: the session's counter belongs to the compute thread.
        # Kept with its session: a configure makes a new one, counting from 0.
        session = self._session
        self._mask_cap_base = (session, 0 if session is None
                               else session.frames_at_mask_memory_cap)

    def _session_stats(self) -> dict[str, float]:
        session = self._session
        if session is None:
            return {}
        base_session, base = self._mask_cap_base
        return {"frames_at_mask_memory_cap": session.frames_at_mask_memory_cap
                - (base if base_session is session else 0)}

    def _preprocess(self, rgb: np.ndarray) -> Any:
        return self._session.segmenter.preprocess(rgb)

    def _process(self, rgb: np.ndarray, stamp_ns: int, frame_key: Any,
                 warmup: bool = False, pixel_values: Any = None) -> tuple[Detections, int]:
        detections, prompts = self._session.process(
            rgb, frame_key, stamp_ns=stamp_ns, pixel_values=pixel_values, track=not warmup)
        return detections, prompts.generation

    def _class_names(self) -> tuple[list[str], int]:
        prompts = self._session.prompts
        return list(prompts.labels), prompts.generation

    # ------------------------------------------------------------------- live parameters
    def _apply_live_parameters(self, changes: dict[str, Any]) -> str | None:
        # Everything of one call is built and checked before any of it applies (`update`).
        try:
            prompts = None
            if "prompts" in changes or "prompt_boxes" in changes:
                prompts = parse_prompt_boxes(
                    changes.get("prompts", self.param("prompts")),
                    changes.get("prompt_boxes", self.param("prompt_boxes")))
            config = None
            if any(name in changes for name in _SEGMENTER_CONFIG_PARAMS):
                config = self._segmenter_config(**{
                    k: v for k, v in changes.items() if k in _SEGMENTER_CONFIG_PARAMS})
            tracker = KEEP
            if any(name in changes for name in _TRACK_PARAMS):
                tracker = self._bytetracker(**{
                    k: v for k, v in changes.items() if k in _TRACK_PARAMS})
            self._session.update(prompts, config, tracker)
        except (InvalidPromptError, ConfigError) as err:
            return str(err)
        if prompts is not None:
            self._publish_label_info()
        return None

    # --------------------------------------------------------------------------- services
    def _create_services(self) -> list[Any]:
        return [
            self._create_guarded_service(SetPrompts, "set_prompts", self._on_set_prompts),
            self._create_guarded_service(Trigger, "reset", self._on_reset),
        ]

    def _on_set_prompts(self, request: SetPrompts.Request,
                        response: SetPrompts.Response) -> SetPrompts.Response:
        try:
            specs = prompt_specs_from_msgs(list(request.texts), list(request.prompts),
                                           self.param("max_prompts"))
            # The parameters must be able to show the set (`ros2 param dump` saves it, a later
            # `prompts` change re-reads the boxes from them): refused, not half shown.
            boxes = sum(len(spec.exemplars) for spec in specs)
            if boxes > MAX_LIST_ITEMS:
                raise InvalidPromptError(
                    f"{boxes} exemplar boxes in the set; the prompt_boxes parameter holds at "
                    f"most {MAX_LIST_ITEMS}")
            # On the compute thread: no frame runs between the new prompts and the track
            # reset inside set_prompts, and ByteTrack is never touched concurrently.
            class_ids = self._runtime.call(self._session.set_prompts, specs)
        except InvalidPromptError as err:
            response.success, response.message = False, str(err)
            self.get_logger().warning(f"set_prompts refused: {err}")
            return response
        # The parameters follow the service, so `ros2 param dump` saves the active prompts.
        active = self._session.prompts.specs
        self._sync_parameters({"prompts": [spec.text for spec in active],
                               "prompt_boxes": format_prompt_boxes(active)})
        self._publish_label_info()
        response.success = True
        response.class_ids = class_ids
        labels = self._session.prompts.labels
        response.message = f"{len(class_ids)} prompt(s) active: {', '.join(labels)}"
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._runtime.call(self._session.reset)
        response.success = True
        response.message = "segmenter reset (tracking ids restart at 0)"
        return response


def main(args: list[str] | None = None) -> int:
    return node_main("segmenter", lambda: [SegmenterNode()], args)
