"""FPN position encodings computed once per grid, not per batch size (core/position_encoding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3_ros.core import position_encoding
from sam3_ros.core.backbone import TorchBackbone
from sam3_ros.core.model_loading import load_sam3


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def pixels(loaded) -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    return loaded.processor(images=images, return_tensors="pt")["pixel_values"]


def test_the_patched_module_is_where_transformers_keeps_it(loaded):
    # Fails on a transformers version that moves or renames it (install would do nothing).
    module = loaded.detector.vision_encoder.neck.position_encoding
    assert type(module).__name__ == "Sam3SinePositionEmbedding"


def test_a_batched_pass_reads_one_frame_of_positions_with_identical_values(
        tiny_checkpoint, loaded, pixels):
    reference = load_sam3(str(tiny_checkpoint), device="cpu", dtype="float32")
    assert not hasattr(reference.detector.vision_encoder.neck.position_encoding,
                       "_sam3_ros_original_forward")
    with torch.inference_mode():
        expected = reference.detector.get_vision_features(pixel_values=pixels)
    got = TorchBackbone(loaded.detector)(pixels)
    assert len(got.fpn_position_encoding) == len(expected.fpn_position_encoding) > 1
    for want, have in zip(expected.fpn_position_encoding, got.fpn_position_encoding,
                          strict=True):
        assert have.shape == want.shape == (3, *want.shape[1:])
        torch.testing.assert_close(have, want, rtol=0, atol=0)
        assert have.stride(0) == 0
        assert have.untyped_storage().nbytes() == want[0].numel() * want.element_size()
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=0, atol=0)
    for want, have in zip(expected.fpn_hidden_states, got.fpn_hidden_states, strict=True):
        torch.testing.assert_close(have, want, rtol=0, atol=0)


def test_every_batch_size_reads_the_same_tensor(loaded, pixels):
    backbone = TorchBackbone(loaded.detector)
    one = backbone(pixels[:1]).fpn_position_encoding
    three = backbone(pixels).fpn_position_encoding
    for a, b in zip(one, three, strict=True):
        assert a.data_ptr() == b.data_ptr()


def test_install_is_idempotent_and_masked_calls_keep_transformers_path(loaded):
    module = loaded.detector.vision_encoder.neck.position_encoding
    assert position_encoding.install(loaded.detector.vision_encoder.neck)
    original = module._sam3_ros_original_forward
    assert position_encoding.install(loaded.detector.vision_encoder.neck)
    assert module._sam3_ros_original_forward is original
    shape = torch.Size((2, 8, 4, 5))
    mask = torch.ones(2, 4, 5, dtype=torch.bool)
    mask[1, :, 3:] = False  # masked encodings differ per frame
    with torch.inference_mode():
        masked = module(shape, torch.device("cpu"), torch.float32, mask)
        want = original(shape, torch.device("cpu"), torch.float32, mask)
    torch.testing.assert_close(masked, want, rtol=0, atol=0)
    assert masked.stride(0) != 0


@pytest.mark.parametrize("neck", [object(), type("Neck", (), {"position_encoding": None})()])
def test_install_refuses_a_neck_without_a_position_module(neck):
    assert position_encoding.install(neck) is False
