"""Demo of the 3D outputs: the segmenter node over real DDS with colour, depth and camera_info.

    python -m sam3_ros.tools.demo --depth [--model CHECKPOINT] [--prompts motorcycle]

Real depth data: scikit-image ships the Middlebury 2014 "Motorcycle" stereo pair down-sampled
by 4 (`skimage.data.stereo_motorcycle()`: left image 500x741 and a float32 ground-truth
disparity, NaN where unknown) with the calibration of the down-sampled images in its
docstring: focal length 994.978 px, principal point (311.193, 254.877) px, principal point
offset between the cameras (doffs) 31.086 px, baseline 193.001 mm. Depth is
Z = f * baseline / (disparity + doffs) (Middlebury's formula), published as 32FC1 metres
registered to the left image, with a CameraInfo of those intrinsics (no distortion: the pair
is rectified). Without scikit-image (`pip install scikit-image`) the demo says so and uses a
generated scene (a table, a mug, a bottle and a ball at known distances) instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

MOTORCYCLE_F_PX = 994.978
MOTORCYCLE_CX_PX, MOTORCYCLE_CY_PX = 311.193, 254.877
MOTORCYCLE_DOFFS_PX = 31.086
MOTORCYCLE_BASELINE_M = 0.193001


def disparity_to_depth_m(disparity_px: np.ndarray, f_px: float, baseline_m: float,
                         doffs_px: float = 0.0) -> np.ndarray:
    """(H, W) float32 depth in metres from a disparity map: Z = f * B / (d + doffs).

    Pixels without a usable disparity (NaN, inf, d + doffs <= 0) get NaN (no depth).
    """
    d = np.asarray(disparity_px, np.float64) + doffs_px
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(np.isfinite(d) & (d > 0), f_px * baseline_m / d, np.nan)
    return depth.astype(np.float32)


def motorcycle_scene() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """(rgb (500, 741, 3) uint8, depth_m (500, 741) float32, (fx, fy, cx, cy)).

    Raises:
        ImportError: scikit-image is not installed.
    """
    from skimage import data

    left, _, disparity = data.stereo_motorcycle()
    depth = disparity_to_depth_m(disparity, MOTORCYCLE_F_PX, MOTORCYCLE_BASELINE_M,
                                 MOTORCYCLE_DOFFS_PX)
    return (np.ascontiguousarray(left[..., :3]), depth,
            (MOTORCYCLE_F_PX, MOTORCYCLE_F_PX, MOTORCYCLE_CX_PX, MOTORCYCLE_CY_PX))


def generated_scene(height: int = 480, width: int = 640
                    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """The demo's generated frame with a matching depth map: wall 2.5 m, table top rising
    from 1.6 m to 0.9 m towards the camera, mug 1.1 m, bottle 1.3 m, ball 0.8 m."""
    from sam3_ros.tools.demo import synthetic_frames

    rgb = synthetic_frames(1, height, width)[0]
    depth = np.full((height, width), 2.5, np.float32)
    rows = np.arange(int(height * 0.65), height)
    depth[rows] = np.linspace(1.6, 0.9, len(rows), dtype=np.float32)[:, None]
    cv2.rectangle(depth, (int(width * 0.15), int(height * 0.45)),
                  (int(width * 0.15) + 70, int(height * 0.68)), 1.1, -1)
    cv2.rectangle(depth, (int(width * 0.75), int(height * 0.3)),
                  (int(width * 0.75) + 40, int(height * 0.68)), 1.3, -1)
    cv2.circle(depth, (int(width * 0.9), int(height * 0.8)), 30, 0.8, -1)
    f = 0.9 * width
    return rgb, depth, (f, f, (width - 1) / 2, (height - 1) / 2)


def run_depth_demo(model: str, prompts: list[str], device: str, frames: int, rate_hz: float,
                   output: Path, score_threshold: float) -> int:
    import rclpy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from visualization_msgs.msg import MarkerArray

    from sam3_ros.msg import Detection3DArray, DetectionArray
    from sam3_ros.ros.image_conversions import numpy_to_image_msg
    from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for

    try:
        rgb, depth, (fx, fy, cx, cy) = motorcycle_scene()
        print("[demo] depth: scikit-image's Middlebury 'Motorcycle' (disparity -> metres, "
              "f 994.978 px, baseline 193.001 mm, doffs 31.086 px)")
    except ImportError:
        rgb, depth, (fx, fy, cx, cy) = generated_scene()
        print("[demo] scikit-image is not installed (pip install scikit-image for the real "
              "Middlebury depth); using a generated scene with known distances")
    output.mkdir(parents=True, exist_ok=True)
    height, width = depth.shape
    ns = "/sam3_depth_demo"
    node = NodeProcess(node_command("segmenter", {
        "model": model, "device": device, "autostart": True, "prompts": prompts,
        "score_threshold": score_threshold, "depth_enabled": True,
    }, remaps={"__ns": ns}))
    client = Client("sam3_depth_demo_camera")
    try:
        camera = client.node.create_publisher(Image, f"{ns}/image", 10)
        depth_pub = client.node.create_publisher(Image, f"{ns}/depth", 10)
        info_pub = client.node.create_publisher(CameraInfo, f"{ns}/camera_info", 10)
        client.subscribe(DetectionArray, f"{ns}/segmenter/detections")
        for msg_type, name in ((Detection3DArray, "detections_3d"), (PointCloud2, "points"),
                               (MarkerArray, "markers")):
            client.subscribe(msg_type, f"{ns}/segmenter/{name}")
        print(f"[demo] starting the segmenter node (model {model}, device {device}) ...")
        wait_for(lambda: client.matched(f"{ns}/segmenter/detections", camera), 300,
                 "the segmenter to load its model and subscribe", node)
        info = CameraInfo(width=width, height=height, distortion_model="plumb_bob",
                          d=[0.0] * 5)
        info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        info.header.frame_id = "demo_camera_optical_frame"
        depth_msg = Image(height=height, width=width, encoding="32FC1", step=width * 4,
                          data=depth.tobytes())
        colour_msg = numpy_to_image_msg(rgb, "rgb8")
        print(f"[demo] publishing {frames} colour + depth + camera_info frames at "
              f"{rate_hz:g} Hz ({width}x{height})")
        for i in range(frames):
            for msg in (info, depth_msg, colour_msg):
                msg.header.stamp.sec = i + 1
                msg.header.frame_id = msg.header.frame_id or "demo_camera_optical_frame"
            info_pub.publish(info)
            depth_pub.publish(depth_msg)
            time.sleep(0.005)  # depth first: the node pairs when the colour result is ready
            camera.publish(colour_msg)
            time.sleep(1.0 / rate_hz)
        # The last frame's 2D result always comes (latest-frame semantics); its 3D follows.
        wait_for(lambda: any(d.header.stamp.sec == frames
                             for d in client.messages(f"{ns}/segmenter/detections")), 120,
                 "the result of the last frame", node)
        time.sleep(0.5)
        for result in client.messages(f"{ns}/segmenter/detections_3d"):
            valid = [d for d in result.detections if d.valid]
            shown = [f"{d.label}#{d.object_id} ({d.centroid.x:+.2f}, {d.centroid.y:+.2f}, "
                     f"{d.centroid.z:.2f}) m, {d.num_points} pts" for d in valid[:4]]
            print(f"[demo] frame {result.header.stamp.sec:3d} [{result.header.frame_id}]: "
                  f"{len(valid)}/{len(result.detections)} objects in 3D  {'; '.join(shown)}")
        with_3d = {r.header.stamp.sec for r in client.messages(f"{ns}/segmenter/detections_3d")}
        print(f"[demo] {len(with_3d)} of {frames} frames with 3D outputs (a frame without 3D: "
              f"see /diagnostics, depth_status)")
        clouds = client.messages(f"{ns}/segmenter/points")
        if clouds:
            print(f"[demo] last cloud: {clouds[-1].width} points; markers arrays received: "
                  f"{len(client.messages(f'{ns}/segmenter/markers'))}")
        preview = np.nan_to_num(depth, nan=0.0)
        cv2.imwrite(str(output / "depth_preview.png"),
                    cv2.applyColorMap(cv2.convertScaleAbs(preview, alpha=255 / max(
                        float(preview.max()), 1e-6)), cv2.COLORMAP_TURBO))
        print(f"[demo] depth preview written to {output}/depth_preview.png")
        return 0
    finally:
        client.close()
        node.stop()
        if rclpy.ok():
            rclpy.shutdown()
