"""Over DDS: a segmenter node on a SAM3-LiteText checkpoint with `text_cache_dir` set."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sam3_ros.msg")
if importlib.util.find_spec("transformers.models.sam3_lite_text") is None:
    pytest.skip("this transformers has no models/sam3_lite_text (Sam3LiteTextModel)",
                allow_module_level=True)

from parity import clipped_xyxy  # noqa: E402
from sam3_ros.msg import DetectionArray  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from sam3_ros.ros.detection_conversions import msg_to_detections  # noqa: E402
from sam3_ros.ros.image_conversions import numpy_to_image_msg  # noqa: E402
from sam3_ros.tools.ros_runner import Client, NodeProcess, node_command, wait_for  # noqa: E402

pytestmark = pytest.mark.ros

SCORE_THRESHOLD = 0.25


def _direct(checkpoint, rgb: np.ndarray, text: str):
    import torch
    from transformers import Sam3Processor
    from transformers.models.sam3_lite_text import Sam3LiteTextModel

    processor = Sam3Processor.from_pretrained(checkpoint)
    model = Sam3LiteTextModel.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        outputs = model(**processor(images=rgb, text=text, return_tensors="pt"))
    result = processor.post_process_instance_segmentation(
        outputs, threshold=SCORE_THRESHOLD, mask_threshold=0.5, target_sizes=[rgb.shape[:2]])[0]
    order = torch.argsort(result["scores"], descending=True, stable=True)
    return (result["scores"][order].numpy(), result["boxes"][order].numpy(),
            result["masks"][order].bool().numpy())


def test_lite_text_segmenter_with_text_cache_over_dds(tmp_path_factory):
    from sam3_ros.tools.make_tiny_checkpoint import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("lite"), variant="lite_text")
    cache_dir = tmp_path_factory.mktemp("text_cache")
    ns = "/lite_test"
    cmd = node_command("segmenter", {
        "model": str(checkpoint), "device": "cpu", "autostart": True, "prompts": ["mug"],
        "score_threshold": SCORE_THRESHOLD, "max_detections": 1000,
        "text_cache_dir": str(cache_dir),
    }, remaps={"__ns": ns, "image": f"{ns}/camera/image"})
    node = NodeProcess(cmd)
    client = Client("lite_text_test_client")
    try:
        pub = client.node.create_publisher(Image, f"{ns}/camera/image", 10)
        client.subscribe(DetectionArray, f"{ns}/segmenter/detections")
        rgb = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        msg = numpy_to_image_msg(rgb, "rgb8")
        msg.header.stamp.sec = 7

        def got():
            pub.publish(msg)
            return [d for d in client.messages(f"{ns}/segmenter/detections")
                    if d.header.stamp.sec == 7]

        result = msg_to_detections(wait_for(got, 120, "detections", node, poll_s=0.2)[0])
        scores, boxes, masks = _direct(checkpoint, rgb, "mug")
        assert len(result) == len(scores) > 0
        np.testing.assert_array_equal(result.scores, scores)
        np.testing.assert_array_equal(result.xyxy, clipped_xyxy(boxes, *rgb.shape[:2]))
        np.testing.assert_array_equal(result.masks, masks)
        assert len(list(cache_dir.glob("*.safetensors"))) == 1
        assert "configure failed" not in node.output()
    finally:
        client.close()
        node.stop()
