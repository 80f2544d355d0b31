"""Shared lifecycle plumbing of the sam3_ros nodes (segmenter, tracker).

Lifecycle phases mean what they say:

* configure: validate parameters, load (or adopt a shared) model, warm it up, create the
  publishers and services. Fails with the reason in the log.
* activate: enable the (lifecycle) publishers, subscribe to the camera and start the
  inference worker. An inactive node publishes nothing but `/diagnostics`.
* deactivate: unsubscribe and stop the worker; the model stays loaded.
* cleanup: drop publishers, services and the model (GPU memory is freed).

Names: the camera input is the relative topic `image` (remap it); every output topic and
service is private to the node (`~/detections`, `~/set_prompts`, ...), so two nodes side by
side in one namespace never share a name, and the pipeline's nodes get the same names as the
standalone ones (`/segmenter/...`, `/tracker/...`).

No request, message or parameter can end the process: service handlers, parameter callbacks
and the image callback turn unexpected errors into a refusal with the reason (and a log line);
a parameter override of the wrong type at start-up is converted where that is unambiguous
(`prompts:=person`) or refused, and configure then fails with the reason.

Frames go from the subscription callback straight into this node's stream of the process
runtime (`core.runtime`). The camera subscription is `raw=True`: the callback reads the
stamp and frame id from the serialized sample (`core.image_cdr`) and the pixels stay a view
of it, with no message object built. The compute thread takes the newest frame of every
active stream (a slow model never builds a queue; replaced frames count as dropped),
decodes it, runs one batched backbone pass for all cameras of the process, then this node's
session, and hands the result to the node's output thread, which publishes `detections`
(and 3D) first and then draws the label image and overlay. Subclasses implement
`_create_session`, `_process` and their services.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import Sam3RosError
from sam3_ros.core.image_cdr import CompressedImageFields, ImageFields
from sam3_ros.core.image_codec import check_image_size, to_rgb8
from sam3_ros.core.model_hub import ModelHub, ModelKey, SharedModel
from sam3_ros.core.output_buffer import OutputBuffer
from sam3_ros.core.render import draw_overlay, label_image, mask_crops
from sam3_ros.core.runtime import PreparedFrame, Runtime, Stream, StreamStats
from sam3_ros.core.text_cache import TextEmbeddingCache
from sam3_ros.core.vision_features import FrameKey, frame_key
from sam3_ros.launch_plan import EXECUTORS
from sam3_ros.msg import DetectionArray, LabelInfo
from sam3_ros.ros.depth_outputs import DEPTH_3D_PARAMS, DepthOutputs, depth_config
from sam3_ros.ros.detection_conversions import (
    detections_to_msg,
    detections_to_vision_msgs,
    label_info_msg,
)
from sam3_ros.ros.image_conversions import (
    compressed_msg_to_numpy,
    fields_header,
    image_fields,
    image_msg_to_numpy,
    numpy_to_image_msg,
)
from sam3_ros.ros.params import ParamSpec, unknown_parameters
from sam3_ros.ros.rclpy_compat import (
    normalise_parameter_overrides,
    parameter_override,
    parameter_override_names,
)

# Latest-frame semantics start in DDS: keep only the newest image in the reader's history.
IMAGE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
)
LABEL_INFO_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

_PY_TO_PARAM_TYPE = {bool: 1, int: 2, float: 3, str: 4}  # rcl_interfaces ParameterType values
class _ExecutorStalls:
    """When a callback of this process last held the executor long enough to lose frames.

    Image readers keep only the newest frame (depth 1): while a service or parameter call
    waits for the compute thread (a whole inference on a slow model), frames the camera sent
    are overwritten unseen. Process-wide, because the nodes of a process share one executor.
    """

    STALL_S = 0.02

    def __init__(self) -> None:
        self.last_end_s = -float("inf")

    def record(self, started_s: float) -> None:
        ended = time.monotonic()
        if ended - started_s >= self.STALL_S:
            self.last_end_s = ended


EXECUTOR_STALLS = _ExecutorStalls()
_UNKNOWN_PARAMETERS_WARNED: set[str] = set()
"""Unknown parameter overrides already warned about in this process."""
DIAGNOSTICS_WARN_S = 5.0
"""`/diagnostics` reports WARN while a frame or request failed within this many seconds."""


class Sam3LifecycleNode(LifecycleNode):
    """Base class: parameters, image input, latest-frame worker and the common outputs.

    Args:
        node_name: ROS node name.
        param_specs: The node's parameter table (name -> ParamSpec).
        model_hub: Hands out models shared with the other nodes of this process (the pipeline
            executable passes one hub to all); None gives the node a private hub.
        needs_tracker: Load the video model (detector + tracker) rather than the detector.
        runtime: The runtime whose compute thread serves this node's camera; None: the
            process's (`Runtime.default()`), shared by every node of the process.
        **kwargs: Passed to rclpy's Node (parameter_overrides, namespace, cli_args: what a
            launch file or an rclpy component container passes).
    """

    def __init__(self, node_name: str, param_specs: dict[str, ParamSpec], *,
                 model_hub: ModelHub | None = None, needs_tracker: bool = False,
                 runtime: Runtime | None = None, **kwargs: Any):
        if kwargs.get("parameter_overrides"):
            kwargs["parameter_overrides"] = normalise_parameter_overrides(
                kwargs["parameter_overrides"])
        super().__init__(node_name, **kwargs)
        self._specs = param_specs
        self._hub = model_hub or ModelHub()
        self._needs_tracker = needs_tracker
        self._parameter_errors: dict[str, str] = {}
        """Start-up overrides that were refused: configure fails while any remain."""
        for spec in param_specs.values():
            self._declare(spec)
        self._warn_unknown_parameters()
        if hasattr(self, "add_pre_set_parameters_callback"):  # rclpy Iron and later
            self.add_pre_set_parameters_callback(self._coerce_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._configured = False
        self._model: SharedModel | None = None
        self._runtime = runtime or Runtime.default()
        self._stream: Stream | None = None
        # The last activation's stream counters, reported until the next activate (all
        # counters restart together there, not at deactivate).
        self._stopped_stream_stats = StreamStats()
        # Results are published (and drawn) on the node's output thread, so the compute thread
        # goes on with the next cycle at once.
        # One result waits while one is published; a publisher slower than the model gets the
        # newest (4 waiting made every result 4 inferences stale once publishing fell
        # behind). Discards: `outputs_discarded`.
        self._outputs: OutputBuffer[tuple] = OutputBuffer(capacity=1)
        self._output_thread: threading.Thread | None = None
        self._render_skipped = 0
        self._published = 0
        self._publish_sum_ms = 0.0
        self._running = False
        self._subscription = None
        self._compressed_input = False
        """The subscription delivers CompressedImage samples (`input_kind`)."""
        self._image_source = ""
        """Resolved topic of the subscription: part of each frame's feature-sharing key."""
        self._warned_unstamped = False
        self._output_pubs: dict[str, Any] = {}
        self._service_handles: list[Any] = []
        self._diag_timer = None
        self._stats_lock = threading.Lock()
        self._errors = 0
        self._last_error = ""
        self._last_error_at_s = -float("inf")
        self._last_error_log_s = 0.0
        self._depth = DepthOutputs(self)  # 3D outputs (depth + camera_info), off by default
        self._shutting_down = False
        self._node_destroyed = False
        self._last_image_at_s = -float("inf")
        self._syncing_parameters = False
        self._autostart_timer = None
        if self.param("autostart"):
            # Configure + activate from the executor, so that a node loaded into a component
            # container starts the same way as one started by `ros2 run`.
            self._autostart_timer = self.create_timer(0.0, self._autostart)
        else:
            # A params file copied from config/*.yaml carries `autostart: false`, which ranks
            # over the launch files' own `true`: say why the node sits idle.
            self.get_logger().info("unconfigured: autostart is false, waiting for the "
                                   "configure transition (ros2 lifecycle set <node> configure)")

    # ----------------------------------------------------------------------------- parameters
    def _declare(self, spec: ParamSpec) -> None:
        """Declare one parameter; a start-up override that does not fit is converted or
        refused here (never raised: that would end the process before it could say why)."""
        value = spec.default
        given, override = parameter_override(self, spec.name)
        if given:
            coerced, reason = spec.coerce(override)
            if reason is None:
                reason = spec.check(coerced)
            if reason is None:
                value = coerced
            else:
                self._parameter_errors[spec.name] = reason
                self.get_logger().error(
                    f"parameter {reason}; keeping the default {spec.default!r}. Configure "
                    f"fails until it is set to a valid value (ros2 param set).")
        self.declare_parameter(spec.name, value, self._descriptor(spec), ignore_override=True)

    def _warn_unknown_parameters(self) -> None:
        # Both kinds' tables: a file keyed /** reaches segmenters and trackers alike. Imported
        # here, not at the top: those modules import this one.
        from sam3_ros.ros.segmenter_node import PARAMS as SEGMENTER
        from sam3_ros.ros.tracker_node import PARAMS as TRACKER

        unknown = [line for line in unknown_parameters(parameter_override_names(self),
                                                       [*SEGMENTER, *TRACKER, *self._specs])
                   if line not in _UNKNOWN_PARAMETERS_WARNED]
        if unknown:
            # Once per process: the pipeline's nodes all receive the same overrides.
            _UNKNOWN_PARAMETERS_WARNED.update(unknown)
            self.get_logger().warning(
                f"ignored: no sam3_ros node has the parameter(s) {', '.join(unknown)} (from a "
                "params file, a launch SetParameter or -p): a typo? Parameters meant for "
                "other nodes may be ignored")

    def _descriptor(self, spec: ParamSpec) -> ParameterDescriptor:
        desc = spec.description
        if spec.choices:
            desc += f" (one of: {', '.join(spec.choices)})"
        if spec.reload:
            desc += " [needs cleanup + configure to change]"
        kind = type(spec.default)
        param_type = 9 if kind is list else _PY_TO_PARAM_TYPE[kind]  # 9: STRING_ARRAY
        descriptor = ParameterDescriptor(name=spec.name, type=param_type, description=desc)
        # Ranges in the descriptor: `ros2 param describe` and rqt_reconfigure show them.
        if spec.min_value is not None and spec.max_value is not None:
            if kind is int:
                descriptor.integer_range = [IntegerRange(
                    from_value=int(spec.min_value), to_value=int(spec.max_value), step=0)]
            elif kind is float:
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(spec.min_value), to_value=float(spec.max_value),
                    step=0.0)]
        return descriptor

    def param(self, name: str) -> Any:
        value = self.get_parameter(name).value
        return list(value) if isinstance(value, list | tuple) else value

    def _on_set_parameters(self, params: list[rclpy.parameter.Parameter]) -> SetParametersResult:
        started = time.monotonic()
        try:
            return self._check_and_apply_parameters(params)
        except Exception as err:  # a parameter call must never end the process
            self.get_logger().error(f"parameter change failed: {type(err).__name__}: {err}")
            return self._refuse(f"internal error: {type(err).__name__}: {err}")
        finally:
            EXECUTOR_STALLS.record(started)

    def _coerce_parameters(
            self, params: list[rclpy.parameter.Parameter]) -> list[rclpy.parameter.Parameter]:
        """Before rclpy's type check: a near-miss type is converted as at start-up
        (`ros2 param set ... score_threshold 1` -> 1.0, `prompts person` -> [person]);
        rclpy refused those with "Wrong parameter type" before the node saw them."""
        out = []
        for p in params:
            spec = self._specs.get(p.name)
            if spec is not None:
                try:
                    value, reason = spec.coerce(p.value)
                    if reason is None and type(value) is not type(p.value):
                        p = rclpy.parameter.Parameter(p.name, value=value)
                except Exception:  # never fail here: the set callback gives the reason
                    pass
            out.append(p)
        return out

    def _check_and_apply_parameters(
            self, params: list[rclpy.parameter.Parameter]) -> SetParametersResult:
        changes: dict[str, Any] = {}
        for p in params:
            spec = self._specs.get(p.name)
            if spec is None:
                continue  # rclpy's own (use_sim_time, qos_overrides.*)
            value, reason = spec.coerce(p.value)
            if reason is None:
                reason = spec.check(value)
            # The same value again is not a change (`ros2 param load` of a dump re-sets all).
            if reason is None and spec.reload and self._configured and value != self.param(
                    p.name):
                reason = (f"parameter '{p.name}' needs the model reloaded: deactivate, cleanup, "
                          f"set it, then configure again")
            if reason is not None:
                return self._refuse(reason)
            changes[p.name] = value
        # Configured, the 3D parameters agree (configure checked them): a change that would
        # break that is refused. Unconfigured, configure judges them, so that fixing two of
        # them one `ros2 param set` at a time is possible.
        if self._configured:
            reason = self._depth_parameters_error(
                lambda name: changes[name] if name in changes else self.param(name), changes)
            if reason is not None:
                return self._refuse(reason)
        if changes and self._configured and not self._syncing_parameters:
            reason = self._runtime.call(self._apply_live_parameters, changes)
            if reason is not None:
                return self._refuse(reason)
        for name in changes:
            self._parameter_errors.pop(name, None)
        return SetParametersResult(successful=True)

    def _sync_parameters(self, values: dict[str, Any]) -> None:
        """Make parameters show state that a service already applied (not applied again)."""
        self._syncing_parameters = True
        try:
            results = self.set_parameters([
                rclpy.parameter.Parameter(name, value=value) for name, value in values.items()])
        finally:
            self._syncing_parameters = False
        for result in results:
            if not result.successful:
                self.get_logger().warning(f"parameters do not show the new state: {result.reason}")

    def _refuse(self, reason: str) -> SetParametersResult:
        self.get_logger().warning(f"rejected parameter change: {reason}")
        return SetParametersResult(successful=False, reason=reason)

    @staticmethod
    def _depth_parameters_error(param: Callable[[str], Any],
                                changes: dict[str, Any] | None = None) -> str | None:
        """Why the 3D parameters disagree with each other (each is within its own range),
        or None. Judged only with depth_enabled, and for a change only when it touches them."""
        if not param("depth_enabled"):
            return None
        if changes is not None and not any(n in changes
                                           for n in (*DEPTH_3D_PARAMS, "depth_enabled")):
            return None
        try:
            depth_config(param)
        except ValueError as err:
            return f"3D parameters: {err}"
        return None

    def _apply_live_parameters(self, changes: dict[str, Any]) -> str | None:
        """Apply validated live parameters (all of one set call) to the running session.

        Returns:
            A reason to refuse the whole change, or None. The default accepts (output options
            are read per frame); subclasses apply the settings that live in their session.
        """
        return None

    # ------------------------------------------------------------------------------ lifecycle
    def _autostart(self) -> None:
        self.destroy_timer(self._autostart_timer)
        self._autostart_timer = None
        # Loading runs on the compute thread and cannot be interrupted: Ctrl-C during it takes
        # effect when the load returns.
        try:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()
            else:
                self.get_logger().error("autostart: configure failed, staying unconfigured")
        except Exception as err:
            # A lifecycle manager moved the node first (its change_state ran before this
            # timer): rclpy refuses the transition with an exception, which would otherwise
            # leave the executor and end the process.
            self.get_logger().warning(f"autostart skipped: {type(err).__name__}: {err}")

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        started = time.monotonic()
        try:
            return self._configure()
        finally:
            EXECUTOR_STALLS.record(started)

    def _configure(self) -> TransitionCallbackReturn:
        if self._parameter_errors:
            self.get_logger().error("configure failed: invalid parameter(s): " + "; ".join(
                self._parameter_errors.values()))
            return TransitionCallbackReturn.FAILURE
        reason = self._depth_parameters_error(self.param)
        if reason is not None:  # every frame would publish no 3D, with a throttled warning
            self.get_logger().error(f"configure failed: {reason}")
            return TransitionCallbackReturn.FAILURE
        reason = None
        try:
            self._runtime.call(self._load_and_warm_up)
        except Exception as err:  # configure must fail with a reason, never crash the node
            reason = str(err) if isinstance(err, Sam3RosError) else f"{type(err).__name__}: {err}"
        if reason is not None:
            # Released outside the `except`: the exception's traceback holds the frames of
            # the failed load until then (the model, GPU memory included).
            self.get_logger().error(f"configure failed: {reason}")
            self._release_model()
            return TransitionCallbackReturn.FAILURE
        try:
            self._create_outputs()
        except Exception as err:  # e.g. a publisher's bad qos_overrides value
            self.get_logger().error(f"configure failed: cannot create the outputs: {err}")
            self._destroy_outputs()
            self._release_model()
            return TransitionCallbackReturn.FAILURE
        self._configured = True
        self.get_logger().info(
            f"configured: model '{self._model.loaded.source}' on {self._model.loaded.device} "
            f"({str(self._model.loaded.dtype).replace('torch.', '')}), vision backbone "
            f"{self._model.backbone.describe()}; {self._hub.loads} model load(s) in this "
            f"process")
        return TransitionCallbackReturn.SUCCESS

    def _text_cache(self) -> TextEmbeddingCache | None:
        """The prompt text-embedding cache the `text_cache_dir` parameter names (None: off)."""
        folder = self.param("text_cache_dir").strip()
        return TextEmbeddingCache(folder) if folder else None

    def _load_and_warm_up(self) -> None:
        # On the compute thread: the thread that loads and warms the model runs every frame.
        self._model = self._hub.acquire(ModelKey.from_params(self.param),
                                        with_tracker=self._needs_tracker)
        # torch_compile, compile_heads: compiled here whatever `warmup` says (compiling on the
        # first streamed frame would stall the stream for minutes); logs each step's time.
        self._model.prepare(self.get_logger().info)
        self._create_session(self._model)
        if self.param("warmup"):
            self._warm_up()

    def _release_model(self) -> None:
        """Drop the session and give the model back to the hub (the last user frees it)."""
        self._release_session()
        model, self._model = self._model, None
        if model is not None:
            # The node holds no reference while the hub frees it (GPU memory included).
            self._runtime.call(self._hub.release, model)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        try:
            return self._activate(state)
        except Exception as err:
            # Whatever was started is stopped: a retry starts from scratch.
            self.get_logger().error(f"activate failed: {type(err).__name__}: {err}")
            self._stop_worker()
            super().on_deactivate(state)  # the lifecycle publishers stay disabled
            return TransitionCallbackReturn.FAILURE

    def _activate(self, state: State) -> TransitionCallbackReturn:
        self._outputs.reopen()
        self._reset_counters()
        # The node did not listen while inactive: the gap before its first frame is its own,
        # not the camera's (deactivate/activate pauses a tracker; it does not reset it).
        self._last_image_at_s = -float("inf")
        # Subscribe first: if that fails (e.g. a bad qos_overrides value) no thread is left
        # running and no stream registered. Frames arriving before the stream exists are
        # dropped (the node is not active yet).
        options = QoSOverridingOptions.with_default_policies()
        try:
            # raw: the callback gets the serialized sample (see `_on_image`).
            self._compressed_input = self.param("input_kind") == "compressed"
            if self._compressed_input:
                self._subscription = self.create_subscription(
                    CompressedImage, "image/compressed", self._on_image, IMAGE_QOS,
                    qos_overriding_options=options, raw=True)
            else:
                self._subscription = self.create_subscription(
                    Image, "image", self._on_image, IMAGE_QOS, qos_overriding_options=options,
                    raw=True)
            self._depth.subscribe()
        except Exception as err:
            self.get_logger().error(f"activate failed: cannot subscribe: {err}")
            self._stop_worker()  # the subscriptions made before the failing one
            return TransitionCallbackReturn.FAILURE
        self._image_source = self._subscription.topic_name
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._publish_label_info()
        self._running = True
        self._output_thread = threading.Thread(target=self._output_work,
                                               name=f"{self.get_name()}_output", daemon=True)
        self._output_thread.start()
        self._stream = self._runtime.add_stream(self.get_fully_qualified_name(),
                                                _NodeStream(self), source=self._image_source)
        self.get_logger().info(f"active: listening on {self._subscription.topic_name}")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_worker()
        self.get_logger().info("inactive: model kept loaded")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._stop_worker()
        self._destroy_outputs()
        self._release_model()
        self._configured = False
        self.get_logger().info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        """A transition callback raised: release everything, back to unconfigured (a fresh
        configure starts from scratch; without this the model, services and subscriptions
        stayed, and the next configure made a second set)."""
        self.get_logger().error(f"error during a transition from '{state.label}': releasing "
                                "everything, back to unconfigured")
        try:
            return self.on_cleanup(state)
        except Exception as err:
            self.get_logger().error(f"error processing failed: {type(err).__name__}: {err}")
            return TransitionCallbackReturn.FAILURE

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        if self._configured:
            self.on_cleanup(state)
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the threads and give the model back before rclpy destroys the node: callers
        of destroy_node() (the pipeline's error path, tests, containers that destroy what they
        unload) need not run deactivate and cleanup first."""
        if not getattr(self, "_node_destroyed", True):  # True: __init__ did not finish
            self._node_destroyed = True
            steps = [self.stop_streaming]
            if self._configured:
                steps += [self._destroy_outputs, self._release_model]
            for step in steps:
                try:  # each on its own: the model is given back even if a publisher is not
                    step()
                except Exception as err:  # destroying must go on
                    self.get_logger().error(f"destroy: {type(err).__name__}: {err}")
            self._configured = False
        super().destroy_node()

    def stop_streaming(self) -> None:
        """Stop taking and publishing frames (process shutdown): after this returns no thread
        of this node touches a publisher, so the node can be destroyed quietly."""
        self._shutting_down = True
        self._stop_worker()

    def _stop_worker(self) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._depth.unsubscribe()
        if self._stream is not None:
            # Waits for a cycle using the stream: afterwards nothing is delivered.
            self._runtime.remove_stream(self._stream)
            self._stopped_stream_stats = self._stream.stats
            self._stream = None
        self._running = False
        self._outputs.close()
        if self._output_thread is not None:
            self._output_thread.join()
            self._output_thread = None
        # Publishers still enabled here (deactivate disables them after this).
        self._depth.delete_markers(self.get_clock().now().to_msg())

    # ------------------------------------------------------------------------- model, outputs
    def _warm_up(self) -> None:
        # One frame through the whole per-frame path allocates and autotunes kernels now,
        # not on the first camera frame.
        rgb = np.zeros((480, 640, 3), np.uint8)
        self._process(rgb, stamp_ns=0, frame_key=None, warmup=True)

    def _create_outputs(self) -> None:
        qos = 10
        # Lifecycle publishers: nothing goes out while the node is inactive.
        lifecycle_pub = self.create_lifecycle_publisher
        # One by one into the dict: if one fails, `_destroy_outputs` finds the others.
        pubs = self._output_pubs = {}
        pubs["detections"] = lifecycle_pub(DetectionArray, "~/detections", qos)
        pubs["mask"] = lifecycle_pub(Image, "~/mask", qos)
        pubs["overlay"] = lifecycle_pub(Image, "~/overlay", qos)
        pubs["label_info"] = lifecycle_pub(LabelInfo, "~/label_info", LABEL_INFO_QOS)
        pubs["diagnostics"] = self.create_publisher(DiagnosticArray, "/diagnostics", 1)
        vision_cls = _vision_msgs_array_type()
        if vision_cls is not None:
            self._output_pubs["vision_detections"] = lifecycle_pub(
                vision_cls, "~/vision_detections", qos)
        self._depth.create_publishers()
        self._service_handles = self._create_services()
        self._diag_timer = self.create_timer(1.0, self._guarded_diagnostics)

    def _create_guarded_service(self, srv_type: Any, name: str,
                                handler: Callable[[Any, Any], Any]) -> Any:
        """A private service (`~/name`) whose handler can never end the process.

        Any exception, or a response that cannot be serialised (e.g. an id outside its field's
        range), becomes `success: false` with the reason, and a log line.
        """
        from rclpy.serialization import serialize_message

        def guarded(request: Any, response: Any) -> Any:
            started = time.monotonic()
            try:
                response = handler(request, response)
                serialize_message(response)  # fails here, not in the executor
                return response
            except Exception as err:
                reason = f"internal error: {type(err).__name__}: {err}"
                self.get_logger().error(f"{name}: {reason}")
                self._note_error(f"{name}: {reason}")
                refusal = srv_type.Response()
                refusal.success, refusal.message = False, reason
                return refusal
            finally:
                EXECUTOR_STALLS.record(started)

        return self.create_service(srv_type, f"~/{name}", guarded)

    def _destroy_outputs(self) -> None:
        for pub in self._output_pubs.values():
            self.destroy_publisher(pub)
        self._output_pubs = {}
        self._depth.destroy_publishers()
        for srv in self._service_handles:
            self.destroy_service(srv)
        self._service_handles = []
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None

    def _publish_label_info(self) -> None:
        pub = self._output_pubs.get("label_info")
        if pub is None:
            return
        names, generation = self._class_names()
        header = Header(stamp=self.get_clock().now().to_msg())
        pub.publish(label_info_msg(names, generation, header))  # dropped while inactive

    # --------------------------------------------------------------------------- per frame
    def _on_image(self, sample: bytes | Image | CompressedImage) -> None:
        # Runs in the executor: hand the frame over, never raise. `sample` is the serialized
        # message (raw subscription; a message object works too).
        # Frames may have been overwritten unseen if a long callback held the executor since
        # the previous frame arrived.
        stalled = EXECUTOR_STALLS.last_end_s >= self._last_image_at_s
        self._last_image_at_s = time.monotonic()
        try:
            fields = image_fields(sample, self._compressed_input)
        except Exception as err:
            self._report_frame_error(f"{type(err).__name__}: {err}")
            return
        try:
            # Before the frame is submitted: the compute thread may take it at once, and the
            # tracker judges time jumps on the stamps noted before the frame it processes.
            self._depth.colour_received(fields.stamp_ns)
            self._frame_received(fields.stamp_ns, stalled)
        except Exception as err:
            self._report_frame_error(f"{type(err).__name__}: {err}")
        stream = self._stream
        if stream is None:
            return
        key = frame_key(self._image_source, fields.stamp_sec, fields.stamp_nanosec,
                        fields.frame_id)
        if key is None and not self._warned_unstamped:
            self._warned_unstamped = True
            self.get_logger().warning(
                f"frames on {self._image_source} carry no stamp (0): their backbone features "
                "are not shared with other nodes of this process, and time jumps cannot be "
                "detected; set header.stamp in the publisher")
        # The key travels with the frame: computed once, from the topic it arrived on.
        stream.submit((fields, key), key)

    def _frame_received(self, stamp_ns: int, executor_stalled: bool) -> None:
        """Every frame the camera delivered (also those dropped later); for subclasses.

        Args:
            stamp_ns: The frame's stamp.
            executor_stalled: A long callback held this process's executor since the previous
                frame arrived, so frames in between may have been lost here.
        """

    def _note_error(self, text: str) -> None:
        with self._stats_lock:
            self._errors += 1
            self._last_error = text
            self._last_error_at_s = time.monotonic()

    def _report_frame_error(self, text: str) -> None:
        if self._shutting_down or not self._running:
            return  # publishers may already be gone: not the frame's fault
        self._note_error(text)
        now = time.monotonic()
        if now - self._last_error_log_s >= 2.0:  # throttled: a bad camera must not flood logs
            self._last_error_log_s = now
            self.get_logger().error(f"frame skipped: {text}")

    def _decode(self, fields: ImageFields | CompressedImageFields) -> tuple[np.ndarray, str]:
        # The size limit is checked before anything that scales with the image is allocated
        # (for compressed images: from the header, before decoding).
        max_pixels = self.param("max_image_pixels")
        if isinstance(fields, CompressedImageFields):
            array, encoding = compressed_msg_to_numpy(fields, max_pixels=max_pixels)
        else:
            check_image_size(fields.width, fields.height, max_pixels)
            array, encoding = image_msg_to_numpy(fields), fields.encoding
        return array, encoding

    def _prepare(self, fields: ImageFields | CompressedImageFields,
                 key: FrameKey | None) -> PreparedFrame:
        """Compute thread: decode the runtime's chosen frame of this stream (`key`: its
        feature-sharing key, from `_on_image`). For a raw rgb8 frame `rgb` is a read-only
        view of the received sample."""
        array, encoding = self._decode(fields)
        rgb = to_rgb8(array, encoding)
        header = fields_header(fields)
        stamp_ns = fields.stamp_ns
        self._depth.colour_taken(stamp_ns)
        model = self._model
        return PreparedFrame(
            rgb=rgb, key=key,
            feature_cache=model.feature_cache, preprocess=self._preprocess,
            needs_backbone=self._needs_backbone(stamp_ns), context=(header, stamp_ns))

    def _deliver(self, frame: PreparedFrame, result: tuple[Detections, int]) -> None:
        """Compute thread: hand the result to the output thread (never waits)."""
        detections, generation = result
        self._outputs.put((detections, generation, frame.context[0], frame.rgb))

    def _output_work(self) -> None:
        while True:
            item = self._outputs.take()
            if item is None:
                return
            started = time.perf_counter()
            try:
                self._publish(*item)
            except Exception as err:
                self._report_frame_error(f"publishing: {type(err).__name__}: {err}")
                continue
            with self._stats_lock:
                self._published += 1
                self._publish_sum_ms += (time.perf_counter() - started) * 1e3

    def _publish(self, detections: Detections, generation: int, header: Any,
                 rgb: np.ndarray) -> None:
        """Output thread: publish the detections (and 3D) at once, then draw the label image
        and overlay unless a newer result already waits (drawing is skipped, not queued)."""
        pubs = self._output_pubs
        want_masks = self.param("publish_masks")
        # An image nobody subscribes to is not drawn (3.5 ms for an overlay of 20 instances
        # at 1280x720, on the cores the model uses); a subscriber that matches later gets
        # the next frame's.
        want_label = (self.param("publish_mask_image") and detections.masks is not None
                      and pubs["mask"].get_subscription_count() > 0)
        want_overlay = (self.param("publish_overlay")
                        and pubs["overlay"].get_subscription_count() > 0)
        # One pass over the masks serves the message (also its areas and centroids without
        # masks), the label image and the overlay.
        crops = mask_crops(detections) if detections.masks is not None else None
        pubs["detections"].publish(detections_to_msg(
            detections, header, generation, include_masks=want_masks, crops=crops))
        if ("vision_detections" in pubs and self.param("publish_vision_msgs")
                and pubs["vision_detections"].get_subscription_count() > 0):
            vision = detections_to_vision_msgs(detections, header)
            if vision is not None:
                pubs["vision_detections"].publish(vision)
        self._depth.publish(detections, header, crops)
        if want_label or want_overlay:
            if self._outputs.waiting():
                with self._stats_lock:
                    self._render_skipped += 1
                return
            self._render(detections, header, rgb, crops, want_label, want_overlay)

    def _render(self, detections: Detections, header: Any, rgb: np.ndarray,
                crops: Any, want_label: bool, want_overlay: bool) -> None:
        pubs = self._output_pubs
        if want_label:
            labels = label_image(detections, crops=crops)
            encoding = "mono8" if labels.dtype == np.uint8 else "mono16"
            pubs["mask"].publish(numpy_to_image_msg(labels, encoding, header))
        if want_overlay:
            overlay = draw_overlay(
                rgb, detections, "rgb8", alpha=self.param("overlay_alpha"),
                draw_boxes=self.param("overlay_boxes"), draw_labels=self.param("overlay_labels"),
                crops=crops)
            pubs["overlay"].publish(numpy_to_image_msg(overlay, "rgb8", header))

    # ------------------------------------------------------------------------- diagnostics
    def _reset_counters(self) -> None:
        """All per-activation counters start again together (activate)."""
        self._stopped_stream_stats = StreamStats()
        with self._stats_lock:
            self._errors = 0
            self._render_skipped = 0
            self._published = 0
            self._publish_sum_ms = 0.0
            self._last_error = ""
            self._last_error_at_s = -float("inf")

    def stats(self) -> dict[str, float]:
        """This camera's counters since activation (received, dropped, processed, errors,
        latencies from reception to the result), then the process runtime's (prefixed
        `runtime_`: cycles, backbone passes, batch sizes) and the shared model's backbone
        passes."""
        stream = self._stream
        stream_stats = (stream.stats if stream is not None
                        else self._stopped_stream_stats).as_dict()
        with self._stats_lock:
            # Errors outside the runtime (decoding is inside) are counted by the node.
            stats = dict(stream_stats, errors=self._errors,
                         outputs_discarded=self._outputs.discarded,
                         drawing_skipped=self._render_skipped,
                         mean_publish_ms=(self._publish_sum_ms / self._published
                                          if self._published else float("nan")))
        stats.update(self._session_stats())
        stats.update({f"runtime_{k}": v for k, v in self._runtime.stats.as_dict().items()})
        if self._model is not None:
            stats["backbone_calls"] = self._model.feature_cache.backbone_calls
        stats["model_loads"] = self._hub.loads
        return stats

    def _session_stats(self) -> dict[str, float]:
        """Counters of this node's session for the diagnostics (none by default)."""
        return {}

    def _guarded_diagnostics(self) -> None:
        try:
            self._publish_diagnostics()
        except Exception as err:
            if not self._shutting_down:
                self.get_logger().error(f"diagnostics: {type(err).__name__}: {err}")

    def _diagnostic_level(self) -> tuple[bytes, str]:
        """WARN with the reason while something failed within DIAGNOSTICS_WARN_S, else OK."""
        with self._stats_lock:
            age_s = time.monotonic() - self._last_error_at_s
            last_error = self._last_error
        if age_s <= DIAGNOSTICS_WARN_S:
            return DiagnosticStatus.WARN, last_error
        return DiagnosticStatus.OK, "ok"

    def _publish_diagnostics(self) -> None:
        pub = self._output_pubs.get("diagnostics")
        if pub is None:
            return
        stats = self.stats()
        level, message = self._diagnostic_level()
        depth_warning = self._depth.warning()
        if level == DiagnosticStatus.OK and depth_warning:
            level, message = DiagnosticStatus.WARN, depth_warning
        status = DiagnosticStatus(
            name=f"{self.get_fully_qualified_name()}: sam3",
            hardware_id=str(self._model.loaded.device) if self._model else "",
            level=level,
            message=message,
            values=[KeyValue(key=k, value=f"{v:.3f}" if isinstance(v, float) else str(v))
                    for k, v in stats.items()]
            + [KeyValue(key=k, value=v) for k, v in self._depth.diagnostics()],
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        pub.publish(msg)

    # ---------------------------------------------------------------------- for subclasses
    def _create_session(self, model: SharedModel) -> None:
        raise NotImplementedError

    def _release_session(self) -> None:
        raise NotImplementedError

    def _process(self, rgb: np.ndarray, stamp_ns: int, frame_key: Any,
                 warmup: bool = False, pixel_values: Any = None) -> tuple[Detections, int]:
        """Run the model on one RGB frame; return detections and the prompt generation.

        `pixel_values` are the runtime's preprocessed frame (None: preprocess here)."""
        raise NotImplementedError

    def _preprocess(self, rgb: np.ndarray) -> Any:
        """(H, W, 3) uint8 -> (1, 3, S, S) pixel values for this node's model."""
        raise NotImplementedError

    def _needs_backbone(self, stamp_ns: int) -> bool:
        """False when the session will reuse earlier features for this frame."""
        return True

    def _class_names(self) -> tuple[list[str], int]:
        """Class names (index = class id) and the prompt generation, for label_info."""
        raise NotImplementedError

    def _create_services(self) -> list[Any]:
        return []


class _NodeStream:
    """The node's side of its runtime stream (runs on the compute thread)."""

    def __init__(self, node: Sam3LifecycleNode) -> None:
        self._node = node

    def prepare(self, item: tuple[ImageFields | CompressedImageFields,
                                  FrameKey | None]) -> PreparedFrame:
        return self._node._prepare(*item)

    def process(self, frame: PreparedFrame) -> tuple[Detections, int]:
        _header, stamp_ns = frame.context
        return self._node._process(frame.rgb, stamp_ns=stamp_ns, frame_key=frame.key,
                                   pixel_values=frame.pixel_values)

    def deliver(self, frame: PreparedFrame, result: tuple[Detections, int],
                latency_s: float) -> None:
        self._node._deliver(frame, result)

    def failed(self, error: Exception) -> None:
        text = str(error) if isinstance(error, Sam3RosError) else (
            f"{type(error).__name__}: {error}")
        self._node._report_frame_error(text)


def _vision_msgs_array_type() -> type | None:
    try:
        from vision_msgs.msg import Detection2DArray
    except ImportError:
        return None
    return Detection2DArray


def add_executor_argument(parser: argparse.ArgumentParser) -> None:
    """The executables' `--executor` option (process-wide, so not a node parameter)."""
    parser.add_argument("--executor", default="single_threaded",
                        help=f"rclpy executor: {' or '.join(EXECUTORS)} (rclpy's experimental "
                             "EventsExecutor, Jazzy and later)")


def check_executor(name: str) -> None:
    """Raise ValueError with the reason when executor `name` cannot run in this rclpy."""
    if name not in EXECUTORS:
        raise ValueError(f"--executor {name!r}: expected {' or '.join(EXECUTORS)}")
    if name == "events":
        try:
            from rclpy.experimental import EventsExecutor  # noqa: F401
        except ImportError:
            raise ValueError("--executor events needs rclpy's EventsExecutor (ROS 2 Jazzy or "
                             "later); this rclpy has none (Humble): use single_threaded"
                             ) from None


def own_arguments(prog: str, argv: list[str], remove_ros_args: Callable) -> list[str]:
    """The executable's own arguments (after argv[0], without the ROS ones).

    Raises:
        ValueError: malformed ROS arguments (`-p model` without a value, a params file that
            does not exist), with rcl's reason.
    """
    try:
        return remove_ros_args(argv)[1:]
    except Exception as err:  # rclpy's RCLInvalidROSArgsError (no stable import path)
        raise ValueError(f"{prog}: invalid ROS arguments: {err}") from None


def node_main(prog: str, make_nodes: Callable[[], list[Sam3LifecycleNode]],
              args: list[str] | None) -> int:
    """Entry point of the single-node executables: their only own option is `--executor`;
    anything else that is not a ROS argument is refused (a mistyped option would otherwise be
    ignored without a word)."""
    from rclpy.utilities import remove_ros_args

    argv = sys.argv if args is None else args
    parser = argparse.ArgumentParser(prog=prog, exit_on_error=False, allow_abbrev=False)
    add_executor_argument(parser)
    try:
        own = own_arguments(prog, argv, remove_ros_args)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        options, unknown = parser.parse_known_args(own)
        if unknown:
            raise ValueError(f"unknown arguments: {' '.join(unknown)} (node options go after "
                             "--ros-args, e.g. --ros-args -p model:=...)")
        check_executor(options.executor)
    except (argparse.ArgumentError, ValueError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    return run_nodes(make_nodes, args, executor=options.executor)


def run_nodes(make_nodes: Callable[[], list[Sam3LifecycleNode]],
              args: list[str] | None = None, executor: str = "single_threaded") -> int:
    """Entry point of the executables: init rclpy, build the nodes (each autostarts itself
    when its `autostart` parameter is set), spin them on one executor, shut down quietly.

    The default executor is single-threaded on purpose: inference runs off it (worker and
    compute threads), so callbacks are short (hand a frame to the latest-frame slot, answer a
    service). rclpy's MultiThreadedExecutor busy-loops while a callback is in flight
    (ros2/rclpy#1223, #1452): measured here, it delayed frame delivery by up to 760 ms and
    slowed inference by the CPU it burnt. `executor="events"` spins rclpy's experimental
    EventsExecutor (C++ event queue, also one thread), which hands a frame to its callback
    sooner (README, Benchmarks); `check_executor` first.

    Shutdown order: rclpy's own signal handlers would invalidate the context at the first
    Ctrl-C while worker threads still publish (errors from destroyed handles). Here SIGINT and
    SIGTERM end the spin loop; every node stops its threads; then the nodes are destroyed and
    rclpy shuts down.
    """
    import signal

    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    check_executor(executor)

    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except (ImportError, TypeError):  # an rclpy without the option: its handlers stay
        rclpy.init(args=args)

    stop = threading.Event()

    def interrupt(signum: int, frame: Any) -> None:
        # A flag, not an exception: an exception raised at an arbitrary point of the main
        # thread (inside a callback holding a lock or a condition) could leave that object
        # broken for the shutdown that follows.
        stop.set()

    # Explicitly: a process started with SIGINT ignored (a background job) inherits that.
    previous_term = signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    nodes: list[Sam3LifecycleNode] = []
    if executor == "events":
        from rclpy.experimental import EventsExecutor

        spinner = EventsExecutor()
    else:
        spinner = SingleThreadedExecutor()
    try:
        nodes = make_nodes()
        for node in nodes:
            spinner.add_node(node)
        # spin_once with a timeout, not spin(): with rclpy's signal handlers off, a wait
        # without a timeout would not return to Python to see the flag.
        while rclpy.ok() and not stop.is_set():
            spinner.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        for node in nodes:
            node.stop_streaming()
        spinner.shutdown()
        for node in nodes:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return 0
