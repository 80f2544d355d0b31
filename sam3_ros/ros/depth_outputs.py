"""Node-side 3D outputs: depth + camera_info in, Detection3DArray / PointCloud2 / MarkerArray
out. Owned by `Sam3LifecycleNode`, which calls it at five places (create/destroy publishers,
subscribe/unsubscribe, `publish` after `detections`) and asks it for diagnostics.

Subscriptions (relative names, remap them like `image`):
    depth        sensor_msgs/Image, registered to the colour image (16UC1 mm, 32FC1 m, or
                 `depth_scale`), sensor-data QoS
    camera_info  sensor_msgs/CameraInfo of the colour camera
Publications (private names):
    ~/detections_3d         sam3_ros/Detection3DArray (one entry per 2D detection)
    ~/vision_detections_3d  vision_msgs/Detection3DArray (valid objects; when installed)
    ~/points                sensor_msgs/PointCloud2 (x, y, z, instance, class_id)
    ~/markers               visualization_msgs/MarkerArray (boxes and labels)

The colour path never waits for depth: when a frame's detections are out, the depth image
nearest in stamp (within `depth_max_dt`) is taken from a small buffer, which keeps the depth
of frames in inference however long it takes. A frame without a usable
depth or camera info gets no 3D outputs, and diagnostics say why (WARN); errors never reach
the 2D path. An output without subscribers is not built (the objects' geometry always is).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from builtin_interfaces.msg import Time
from rclpy.qos import HistoryPolicy, QoSProfile, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from sam3_ros.core.camera_model import (
    CameraModel,
    InvalidCameraError,
    RayGrid,
    default_depth_scale,
    ray_grid,
)
from sam3_ros.core.detections import Detections
from sam3_ros.core.errors import Sam3RosError
from sam3_ros.core.objects3d import (
    Depth3DConfig,
    MarkerSpec,
    Objects3D,
    check_registration,
    cloud_points,
    marker_plan,
    objects_3d,
)
from sam3_ros.core.render import MaskCrop, mask_crops
from sam3_ros.core.stamp_pairing import StampBuffer
from sam3_ros.msg import Detection3DArray
from sam3_ros.ros.depth_conversions import (
    MessagePool,
    camera_info_key,
    camera_model_from_info,
    cloud_to_msg,
    delete_all_marker,
    depth_msg_to_numpy,
    objects_to_vision_msgs,
)
from sam3_ros.ros.detection_conversions import _vision_msgs
from sam3_ros.ros.image_conversions import image_fields

# Depth frames kept for pairing: the newest 8 (0.27 s at 30 Hz), plus the ones nearest to
# the stamps of colour frames still waiting or in inference (held however long inference
# takes); raw messages are kept, only the paired one is decoded.
DEPTH_BUFFER_FRAMES = 8
CAMERA_CACHE_ENTRIES = 2
"""Camera models and ray grids kept (least recently used out): two camera infos alternating
on one topic (two publishers) must not rebuild a distorted grid, a fraction of a second at
720p on the output thread, on every frame."""
DEPTH_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2,
                       reliability=qos_profile_sensor_data.reliability,
                       durability=qos_profile_sensor_data.durability)
# Best effort matches reliable and best-effort publishers alike (drivers use either).
CAMERA_INFO_QOS = DEPTH_QOS


DEPTH_3D_PARAMS = ("min_depth", "max_depth", "depth_erode_px", "min_points", "depth_outlier_k",
                   "box_percentile", "max_object_points")
"""The parameters of `Depth3DConfig`: each has its own range, and together they must agree
(min_depth < max_depth, max_object_points >= 4 x min_points)."""


def depth_config(param: Callable[[str], Any]) -> Depth3DConfig:
    """The 3D configuration from parameter values read by `param(name)`.

    Raises:
        ValueError: the values do not agree with each other (the reason).
    """
    return Depth3DConfig(
        min_depth_m=param("min_depth"), max_depth_m=param("max_depth"),
        erode_px=param("depth_erode_px"), min_points=param("min_points"),
        outlier_mad_k=param("depth_outlier_k"), box_percentile=param("box_percentile"),
        max_object_points=param("max_object_points"))


def _cached(cache: OrderedDict, key: Any) -> Any:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _remember(cache: OrderedDict, key: Any, value: Any) -> None:
    cache[key] = value
    while len(cache) > CAMERA_CACHE_ENTRIES:
        cache.popitem(last=False)


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class DepthOutputs:
    """3D outputs of one node; every method is a no-op while `depth_enabled` is false.

    Thread use: the subscription callbacks (executor thread) only store messages; `publish`
    runs on the node's worker thread; `diagnostics` on the executor thread.
    """

    def __init__(self, node: Any):
        self._node = node
        self._enabled = False
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._depth: StampBuffer[Image] = StampBuffer(DEPTH_BUFFER_FRAMES)
        self._info: CameraInfo | None = None
        self._info_count = 0
        # camera info key -> model, or why it was refused (str)
        self._cameras: OrderedDict[tuple, CameraModel | str] = OrderedDict()
        self._frames_warned: set[tuple[str, str]] = set()  # (depth, colour) frame ids
        self._rays: OrderedDict[CameraModel, RayGrid] = OrderedDict()
        self._marker_ids: frozenset[int] = frozenset()
        # Markers shown by an earlier run of the topic (a crashed or restarted process, or
        # before a cleanup) whose ids this object does not know: the first markers message
        # after activation deletes everything first.
        self._stale_markers = False
        # Detection3D / Marker objects reused frame after frame (worker thread only).
        self._messages = MessagePool()
        self._lock = threading.Lock()
        self._frames_3d = 0
        self._frames_without_3d = 0
        self._reason = ""
        self._last_dt_ms = float("nan")
        self._last_ms = float("nan")
        self._last_log_s = 0.0
        self._last_sample_log_s = 0.0
        """When a malformed depth sample was last logged (executor thread; throttled)."""

    # ------------------------------------------------------------------------- lifecycle
    def create_publishers(self) -> None:
        """configure: publishers for the 3D outputs (when `depth_enabled`)."""
        self._enabled = bool(self._node.param("depth_enabled"))
        if not self._enabled:
            return
        node, qos = self._node, 10
        # One by one: if one fails, `destroy_publishers` finds the others.
        pubs = self._pubs = {}
        pubs["detections_3d"] = node.create_lifecycle_publisher(
            Detection3DArray, "~/detections_3d", qos)
        pubs["points"] = node.create_lifecycle_publisher(PointCloud2, "~/points", qos)
        pubs["markers"] = node.create_lifecycle_publisher(MarkerArray, "~/markers", qos)
        vision_msgs = _vision_msgs()
        if vision_msgs is not None:
            self._pubs["vision_detections_3d"] = node.create_lifecycle_publisher(
                vision_msgs.Detection3DArray, "~/vision_detections_3d", qos)

    def destroy_publishers(self) -> None:
        """cleanup."""
        for pub in self._pubs.values():
            self._node.destroy_publisher(pub)
        self._pubs = {}
        self._enabled = False
        self._marker_ids = frozenset()

    def subscribe(self) -> None:
        """activate: subscribe to `depth` and `camera_info`."""
        if not self._enabled:
            return
        self._depth.clear()
        self._stale_markers = True
        with self._lock:
            self._frames_3d = self._frames_without_3d = 0
            self._reason = ""
        options = QoSOverridingOptions.with_default_policies()
        # Kept as they are created: if camera_info's fails (a bad qos_overrides value), the
        # depth subscription is destroyed by `unsubscribe` with it, not leaked.
        self._subs.append(
            # raw: the depth image is read in place like the camera's (`core.image_cdr`).
            self._node.create_subscription(Image, "depth", self._on_depth, DEPTH_QOS,
                                           qos_overriding_options=options, raw=True))
        self._subs.append(
            self._node.create_subscription(CameraInfo, "camera_info", self._on_camera_info,
                                           CAMERA_INFO_QOS, qos_overriding_options=options))

    def delete_markers(self, stamp: Any) -> None:
        """deactivate and shutdown, after the worker stopped and before the publishers are
        disabled: delete every marker shown (a stopped node's last boxes stayed in RViz
        forever: markers have no lifetime)."""
        if "markers" not in self._pubs or not self._marker_ids:
            return
        frame_id = self._info.header.frame_id if self._info is not None else ""
        self._marker_ids = frozenset()
        self._pubs["markers"].publish(MarkerArray(markers=[
            delete_all_marker(Header(stamp=stamp, frame_id=frame_id))]))

    def unsubscribe(self) -> None:
        """deactivate (before the worker stops: a late `publish` finds no new depth)."""
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = []

    def _on_depth(self, sample: bytes | Image) -> None:
        # Runs in the executor: never raises. A malformed sample is dropped; the frames it
        # would have paired with report "no depth" (the pairing's own reason).
        try:
            fields = image_fields(sample, compressed=False)
        except Exception as err:
            now = time.monotonic()
            if now - self._last_sample_log_s >= 2.0:
                self._last_sample_log_s = now
                self._node.get_logger().warning(f"depth sample dropped: {err}")
            return
        self._depth.put(fields.stamp_ns, fields)

    def colour_received(self, stamp_ns: int) -> None:
        """Executor thread, every colour frame: its depth may be paired later (the newest
        received frames' depth is held: one of them waits for the model)."""
        if self._enabled:
            self._depth.hold(stamp_ns)

    def colour_taken(self, stamp_ns: int) -> None:
        """Compute thread, a colour frame going into inference: its depth is held until its
        detections are published, however long that takes."""
        if self._enabled:
            self._depth.hold(stamp_ns, taken=True)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._info = msg  # one reference swap: atomic for the worker that reads it
        self._info_count += 1

    # --------------------------------------------------------------------------- per frame
    def publish(self, detections: Detections, header: Any,
                crops: Sequence[MaskCrop] | None = None) -> None:
        """Publish the 3D outputs of one frame, right after its `detections`; never raises
        (a frame without 3D is counted and its reason kept for diagnostics)."""
        if not self._enabled or not self._pubs:
            return
        started = time.perf_counter()
        try:
            reason, dt_ns = self._publish(detections, header, crops)
        except Sam3RosError as err:
            reason, dt_ns = str(err), None
        except Exception as err:  # a bug here must not stop the node's 2D outputs
            reason, dt_ns = f"{type(err).__name__}: {err}", None
        with self._lock:
            if dt_ns is not None:
                self._last_dt_ms = dt_ns / 1e6
            self._reason = reason
            if reason:
                self._frames_without_3d += 1
            else:
                self._frames_3d += 1
                self._last_ms = (time.perf_counter() - started) * 1e3
        if reason:
            self._clear_markers(header)
            now = time.monotonic()
            if now - self._last_log_s >= 2.0:  # throttled like the 2D frame errors
                self._last_log_s = now
                self._node.get_logger().warning(f"frame without 3D outputs: {reason}")

    def _publish(self, detections: Detections, header: Any,
                 crops: Sequence[MaskCrop] | None) -> tuple[str, int | None]:
        """Returns (reason no 3D was published or "", depth - colour stamp in ns)."""
        info = self._info
        if info is None:
            return "no camera_info received", None
        if detections.masks is None:
            return "the detections carry no masks", None
        param = self._node.param
        pairing = self._depth.nearest(_stamp_ns(header.stamp),
                                      round(param("depth_max_dt") * 1e9), release=True)
        if pairing.item is None:
            return pairing.reason, pairing.dt_ns
        try:
            cfg = depth_config(param)
        except ValueError as err:
            return f"depth parameters: {err}", pairing.dt_ns
        camera = self._camera_model(info, bool(param("depth_rectified")))
        depth_msg = pairing.item
        try:
            depth = depth_msg_to_numpy(depth_msg)
        except Sam3RosError as err:
            return f"depth image: {err}", pairing.dt_ns
        colour_frame = info.header.frame_id or header.frame_id
        if depth_msg.frame_id and colour_frame and depth_msg.frame_id != colour_frame and \
                (depth_msg.frame_id, colour_frame) not in self._frames_warned and \
                len(self._frames_warned) < 16:
            # Depth must be registered to the colour image (e.g. RealSense
            # aligned_depth_to_color); the raw depth of another optical frame with the same
            # aspect ratio passes every size check and gives wrong 3D.
            self._frames_warned.add((depth_msg.frame_id, colour_frame))
            self._node.get_logger().warning(
                f"depth frame_id '{depth_msg.frame_id}' differs from the colour camera's "
                f"'{colour_frame}': depth must be registered to the colour image (e.g. "
                "aligned_depth_to_color); 3D outputs assume it is")
        scale = param("depth_scale") or default_depth_scale(depth_msg.encoding)
        colour_hw = (detections.image_height_px, detections.image_width_px)
        check_registration(colour_hw, depth.shape, (camera.height_px, camera.width_px))
        rays = self._rays_for(camera, depth.shape)
        if crops is None:
            crops = mask_crops(detections)
        objects = objects_3d(crops, colour_hw, depth, scale, rays, cfg)
        out_header = Header(stamp=header.stamp, frame_id=colour_frame)
        self._send(objects, detections, out_header,
                   Time(sec=depth_msg.stamp_sec, nanosec=depth_msg.stamp_nanosec))
        return "", pairing.dt_ns

    def _camera_model(self, info: CameraInfo, rectified: bool) -> CameraModel:
        key = (camera_info_key(info), rectified)
        result = _cached(self._cameras, key)
        if result is None:
            # A refused camera info is remembered too: not validated again on every frame.
            try:
                result = camera_model_from_info(info, rectified)
            except InvalidCameraError as err:
                result = str(err)
            _remember(self._cameras, key, result)
        if isinstance(result, str):
            raise InvalidCameraError(result)
        return result

    def _rays_for(self, camera: CameraModel, depth_hw: tuple[int, int]) -> RayGrid:
        # A distorted 1280x720 grid takes a fraction of a second: computed once per camera.
        scaled = camera.scaled_to(depth_hw[1], depth_hw[0])
        rays = _cached(self._rays, scaled)
        if rays is None:
            rays = ray_grid(scaled)
            _remember(self._rays, scaled, rays)
        return rays

    def _listened(self, name: str) -> bool:
        """Whether the output has subscribers: an output nobody subscribes to is not built
        (a subscriber that matches later gets the next frame, as it would anyway)."""
        return self._pubs[name].get_subscription_count() > 0

    def _send(self, objects: Objects3D, detections: Detections, header: Header,
              depth_stamp: Any) -> None:
        param, pubs = self._node.param, self._pubs
        if self._listened("detections_3d"):
            pubs["detections_3d"].publish(self._messages.objects_to_msg(
                objects, detections, header, depth_stamp))
        if ("vision_detections_3d" in pubs and param("publish_vision_msgs")
                and self._listened("vision_detections_3d")):
            vision = objects_to_vision_msgs(objects, detections, header)
            if vision is not None:
                pubs["vision_detections_3d"].publish(vision)
        if param("publish_points") and self._listened("points"):
            pubs["points"].publish(cloud_to_msg(
                cloud_points(objects, detections, param("points_stride")), header))
        if param("publish_markers"):
            # Without subscribers the shown ids stay: objects gone meanwhile get their
            # DELETE once someone listens again.
            if self._listened("markers"):
                markers, self._marker_ids = marker_plan(objects, detections,
                                                        self._marker_ids)
                self._publish_markers(markers, header)
        elif self._marker_ids:
            self._clear_markers(header)

    def _clear_markers(self, header: Any) -> None:
        """Delete the markers still shown (a frame without 3D must not leave stale boxes)."""
        # A node told not to publish markers sends no DELETEALL either (on a shared markers
        # topic it would wipe other publishers' markers).
        stale = self._stale_markers and self._node.param("publish_markers")
        if not (self._marker_ids or stale) or "markers" not in self._pubs:
            return
        markers, self._marker_ids = marker_plan(None, Detections.empty(1, 1), self._marker_ids)
        frame_id = self._info.header.frame_id if self._info is not None else ""
        self._publish_markers(markers, Header(stamp=header.stamp,
                                              frame_id=frame_id or header.frame_id))

    def _publish_markers(self, markers: Sequence[MarkerSpec], header: Any) -> None:
        """Publish a `marker_plan`, after a DELETEALL the first time after activation."""
        msg = self._messages.markers_to_msg(markers, header) if markers else None
        if self._stale_markers:
            self._stale_markers = False
            msg = MarkerArray(markers=[delete_all_marker(header),
                                       *(msg.markers if msg is not None else ())])
        if msg is not None:
            self._pubs["markers"].publish(msg)

    # ------------------------------------------------------------------------- diagnostics
    def diagnostics(self) -> list[tuple[str, str]]:
        """Key/values for the node's diagnostic status (empty while disabled)."""
        if not self._enabled:
            return []
        with self._lock:
            return [
                ("depth_received", str(self._depth.received)),
                ("camera_info_received", str(self._info_count)),
                ("frames_3d", str(self._frames_3d)),
                ("frames_without_3d", str(self._frames_without_3d)),
                ("depth_last_dt_ms", f"{self._last_dt_ms:.3f}"),
                ("depth_last_3d_ms", f"{self._last_ms:.3f}"),
                ("depth_status", self._reason or "ok"),
            ]

    def warning(self) -> str:
        """Why the last frame had no 3D outputs ("" when it had them, or while disabled)."""
        if not self._enabled:
            return ""
        with self._lock:
            return f"no 3D: {self._reason}" if self._reason else ""
