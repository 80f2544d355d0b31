"""`tracker`: SAM3 streaming memory-bank tracking with persistent object ids.

Topics (the same outputs as the segmenter, so consumers can switch nodes; input relative,
outputs private `~/...`):
    sub  image (sensor_msgs/Image) or image/compressed (sensor_msgs/CompressedImage)
    pub  ~/detections (sam3_ros/DetectionArray), ~/vision_detections (vision_msgs, when
         installed), ~/mask, ~/overlay, ~/label_info, /diagnostics
Services:
    ~/set_prompts (sam3_ros/SetPrompts: text prompts; every instance is tracked, new ones
    picked up), ~/add_objects (sam3_ros/AddObjects: points and/or a box per object,
    caller-chosen ids, refine), ~/remove_objects (sam3_ros/RemoveObjects), ~/reset
    (std_srvs/Trigger)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from std_srvs.srv import Trigger

from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import ConfigError, InvalidPromptError
from sam3_ros.core.model_hub import ModelHub, SharedModel
from sam3_ros.core.tracker import ObjectPromptSpec, TrackerConfig, TrackerSession
from sam3_ros.core.tracker_objects import BOX_POINTS
from sam3_ros.core.vision_features import VisionFeatureCache
from sam3_ros.ros.base_node import Sam3LifecycleNode, node_main
from sam3_ros.ros.params import DEPTH_PARAMS, IO_PARAMS, MODEL_PARAMS, ParamSpec, spec_table
from sam3_ros.srv import AddObjects, RemoveObjects, SetPrompts

TRACKER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("prompts", [""],
              "Text prompts to track every instance of; [''] = none (objects come from "
              "add_objects)"),
    ParamSpec("score_threshold", 0.5, "Detector score needed to start tracking an instance",
              min_value=0.0, max_value=1.0),
    ParamSpec("mask_threshold", 0.0,
              "Mask logit threshold (SAM trackers binarise logits at 0.0)", min_value=-100.0,
              max_value=100.0),
    ParamSpec("max_objects", 16, "Most objects tracked at once", min_value=1, max_value=1000),
    ParamSpec("memory_frames", 16,
              "Frames of per-object model state kept (memory bank + object pointers; SAM3 "
              "reads 7 and 16 of them); older state is dropped, so memory stays flat",
              min_value=1, max_value=256),
    ParamSpec("detect_every_n_frames", 1,
              "Realtime mode: run the text detector every N frames, propagate in between",
              min_value=1, max_value=1000),
    ParamSpec("reuse_backbone_frames", 0,
              "Realtime mode: reuse a frame's backbone features for M more frames (0 = never)",
              min_value=0, max_value=100),
    ParamSpec("max_time_gap_s", 1.0,
              "Reset the stream when consecutive camera stamps (every received frame, also "
              "those dropped while the model is busy) jump backwards or by more than this",
              min_value=0.001, max_value=3600.0),
    ParamSpec("max_lost_frames", 30,
              "Drop a text-detected object occluded for more than this many frames (0 = never; "
              "point/box objects only by remove_objects)", min_value=0, max_value=1_000_000),
    ParamSpec("max_points_per_object", 64,
              "Most prompt points one object may have on one frame (add_objects, refine; a box "
              "counts as 2)",
              min_value=1, max_value=1024),
    ParamSpec("max_prompt_frames", 64,
              "Prompted frames kept per object (transformers reads every one; an object "
              "refined on more frames forgets its oldest prompts)", min_value=1, max_value=4096),
)

PARAMS = spec_table(MODEL_PARAMS, IO_PARAMS, TRACKER_PARAMS, DEPTH_PARAMS)

_CONFIG_PARAMS = ("score_threshold", "mask_threshold", "max_objects", "memory_frames",
                  "detect_every_n_frames", "reuse_backbone_frames", "max_time_gap_s",
                  "max_lost_frames", "max_points_per_object", "max_prompt_frames")


def _texts(values: list[str]) -> list[str]:
    return [v for v in values if v.strip()] if values != [""] else []


def object_specs_from_msgs(objects: list[Any], max_objects: int,
                           max_points_per_object: int) -> list[ObjectPromptSpec]:
    """AddObjects request objects -> core object prompts (validated by the session).

    Raises:
        InvalidPromptError: more objects than max_objects, or an object with more points than
            max_points_per_object (checked before anything is built).
    """
    if len(objects) > max_objects:
        raise InvalidPromptError(f"{len(objects)} objects given, at most {max_objects} are "
                                 "tracked at once (parameter max_objects)")
    for obj in objects:
        # Counted before a tuple per point is built (a request may carry millions).
        count = len(obj.points) + BOX_POINTS * min(len(obj.box), 1)
        if count > max_points_per_object:
            raise InvalidPromptError(
                f"object {obj.object_id}: {count} points, at most {max_points_per_object} per "
                "object allowed (max_points_per_object; a box counts as 2)")
    specs = []
    for obj in objects:
        box = None
        if len(obj.box) > 1:
            raise InvalidPromptError(f"object {obj.object_id}: at most one box, got {len(obj.box)}")
        if len(obj.box):
            b = obj.box[0]
            if not b.positive:
                raise InvalidPromptError(f"object {obj.object_id}: a tracker box must be positive")
            box = (b.x_min, b.y_min, b.x_max, b.y_max)
        specs.append(ObjectPromptSpec(
            object_id=int(obj.object_id), label=obj.label,
            points=tuple((p.x, p.y, bool(p.positive)) for p in obj.points), box=box))
    return specs


class TrackerNode(Sam3LifecycleNode):
    """Lifecycle node tracking objects with SAM3's streaming memory bank."""

    def __init__(self, node_name: str = "tracker", *, model_hub: ModelHub | None = None,
                 **kwargs: Any):
        super().__init__(node_name, PARAMS, model_hub=model_hub, needs_tracker=True, **kwargs)
        self._session: TrackerSession | None = None
        self._reset_base: tuple[TrackerSession | None, tuple[int, int]] = (None, (0, 0))

    def _tracker_config(self, **override: Any) -> TrackerConfig:
        values = {name: self.param(name) for name in _CONFIG_PARAMS}
        values.update(override)
        return TrackerConfig(**values)

    def _create_session(self, model: SharedModel) -> None:
        self._session = TrackerSession(model.loaded, self._tracker_config(),
                                       feature_cache=model.feature_cache,
                                       preprocessing=self.param("preprocessing"),
                                       text_cache=self._text_cache())
        self.get_logger().info(f"preprocessing: {self._session.preprocessing}")
        texts = _texts(self.param("prompts"))
        if texts:
            self._session.set_text_prompts(texts)

    def _release_session(self) -> None:
        self._session = None
        # The baseline must not keep the session, and with it the model, alive after cleanup.
        self._reset_base = (None, (0, 0))

    def _reset_counters(self) -> None:
        super()._reset_counters()
        # Baselines, as the segmenter's: the session's counters belong to the compute thread.
        session = self._session
        self._reset_base = (session, (0, 0) if session is None else
                            (session.reset_count, session.requests_dropped_by_reset))

    def _session_stats(self) -> dict[str, float]:
        # A reset drops the objects and the queued requests, which a behaviour tree may need
        # to send again (the log line names them).
        session = self._session
        if session is None:
            return {}
        base_session, (resets, dropped) = self._reset_base
        if base_session is not session:
            resets = dropped = 0
        return {"automatic_resets": session.reset_count - resets,
                "requests_dropped_by_reset": session.requests_dropped_by_reset - dropped}

    def _frame_received(self, stamp_ns: int, executor_stalled: bool) -> None:
        # Time jumps are judged on what the camera sent, not on the frames this node got to
        # process: a model slower than the camera must keep tracking, also across a service
        # call that held the executor for a whole inference.
        session = self._session
        if session is not None:
            session.note_camera_stamp(stamp_ns, gap_may_be_ours=executor_stalled)

    def _warm_up(self) -> None:
        # A throwaway session: the warm-up frame must not enter the stream's memory bank. Its
        # features come from the model's backbone (with backend onnxruntime or torch_int8 the
        # torch ViT is released: a session's default torch cache failed configure).
        session = TrackerSession(self._model.loaded, self._tracker_config(),
                                 feature_cache=VisionFeatureCache(self._model.backbone, 1),
                                 preprocessing=self.param("preprocessing"))
        session.add_objects([ObjectPromptSpec(object_id=0, points=((320.0, 240.0, True),))])
        session.process_frame(np.zeros((480, 640, 3), np.uint8), stamp_ns=0)

    def _preprocess(self, rgb: np.ndarray) -> Any:
        return self._session.preprocess(rgb)

    def _needs_backbone(self, stamp_ns: int) -> bool:
        return self._session.needs_backbone()

    def _process(self, rgb: np.ndarray, stamp_ns: int, frame_key: Any,
                 warmup: bool = False, pixel_values: Any = None) -> tuple[Detections, int]:
        session = self._session
        try:
            detections = session.process_frame(rgb, stamp_ns=stamp_ns, frame_key=frame_key,
                                               pixel_values=pixel_values)
        finally:
            # Also when the frame failed: the session then resets itself and says why.
            reason = session.last_reset_reason
            if reason:
                self.get_logger().warning(f"tracker reset: {reason}")
                session.last_reset_reason = None
        return detections, session.prompt_generation

    def _class_names(self) -> tuple[list[str], int]:
        return list(self._session.text_prompts), self._session.prompt_generation

    def _apply_live_parameters(self, changes: dict[str, Any]) -> str | None:
        # Both are checked before either applies (`update`).
        try:
            config = None
            if any(name in changes for name in _CONFIG_PARAMS):
                config = self._tracker_config(**{
                    k: v for k, v in changes.items() if k in _CONFIG_PARAMS})
            texts = _texts(changes["prompts"]) if "prompts" in changes else None
            self._session.update(config, texts)
        except (InvalidPromptError, ConfigError) as err:
            return str(err)
        if texts is not None:
            self._publish_label_info()
        return None

    # --------------------------------------------------------------------------- services
    def _create_services(self) -> list[Any]:
        return [
            self._create_guarded_service(SetPrompts, "set_prompts", self._on_set_prompts),
            self._create_guarded_service(AddObjects, "add_objects", self._on_add_objects),
            self._create_guarded_service(RemoveObjects, "remove_objects",
                                         self._on_remove_objects),
            self._create_guarded_service(Trigger, "reset", self._on_reset),
        ]

    def _refused(self, response: Any, service: str, err: Exception) -> Any:
        response.success, response.message = False, str(err)
        self.get_logger().warning(f"{service} refused: {err}")
        return response

    def _on_set_prompts(self, request: SetPrompts.Request,
                        response: SetPrompts.Response) -> SetPrompts.Response:
        try:
            if any(len(p.exemplar_boxes) for p in request.prompts):
                raise InvalidPromptError("the tracker takes text prompts only; box exemplars "
                                         "are a segmenter feature (use add_objects for boxes)")
            texts = list(request.texts) + [p.text for p in request.prompts]
            if len(texts) > 64:
                raise InvalidPromptError(f"{len(texts)} prompts given, at most 64 allowed")
            class_ids = self._runtime.call(self._session.set_text_prompts, texts)
        except InvalidPromptError as err:
            return self._refused(response, "set_prompts", err)
        # The parameter follows the service, so `ros2 param dump` saves the active prompts.
        self._sync_parameters({"prompts": list(self._session.text_prompts) or [""]})
        self._publish_label_info()
        response.success, response.class_ids = True, class_ids
        # The validated phrases (whitespace collapsed), not the request's raw strings.
        response.message = ("tracking every instance of: "
                            f"{', '.join(self._session.text_prompts)}")
        return response

    def _on_add_objects(self, request: AddObjects.Request,
                        response: AddObjects.Response) -> AddObjects.Response:
        stamp_ns = request.stamp.sec * 1_000_000_000 + request.stamp.nanosec
        try:
            if request.stamp.sec < 0 or request.stamp.nanosec >= 1_000_000_000:
                raise InvalidPromptError(
                    f"stamp {request.stamp.sec} s {request.stamp.nanosec} ns is not a valid "
                    "time (sec >= 0, nanosec < 1000000000; zero = the next frame)")
            specs = object_specs_from_msgs(list(request.objects), self.param("max_objects"),
                                           self.param("max_points_per_object"))
            ids = self._session.add_objects(specs,
                                            frame_stamp_ns=stamp_ns or None,
                                            refine=request.refine)
        except InvalidPromptError as err:
            return self._refused(response, "add_objects", err)
        response.success, response.object_ids = True, ids
        verb = "refining" if request.refine else "tracking"
        response.message = f"{verb} object(s) {ids}"
        return response

    def _on_remove_objects(self, request: RemoveObjects.Request,
                           response: RemoveObjects.Response) -> RemoveObjects.Response:
        try:
            if len(request.object_ids) > 100_000:
                raise InvalidPromptError(f"{len(request.object_ids)} ids given")
            self._session.remove_objects(list(request.object_ids))
        except InvalidPromptError as err:
            return self._refused(response, "remove_objects", err)
        response.success = True
        response.message = f"removed object(s) {list(request.object_ids)}"
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._session.reset()
        response.success = True
        response.message = "tracker reset: all objects and memory dropped, prompts kept"
        return response


def main(args: list[str] | None = None) -> int:
    return node_main("tracker", lambda: [TrackerNode()], args)
