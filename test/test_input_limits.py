"""Pure limits and conversions added for hostile inputs: image sizes read from compressed
headers before decoding, parameter coercion, prompt_boxes round trip, exemplar clipping,
chunked mask upsampling."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from sam3_ros.core.errors import InvalidImageError, InvalidPromptError
from sam3_ros.core.image_codec import check_image_size, compressed_image_size, decode_compressed
from sam3_ros.core.prompts import (
    MAX_EXEMPLARS_PER_PROMPT,
    BoxExemplar,
    PromptSpec,
    exemplar_arrays,
    format_prompt_boxes,
    parse_prompt_boxes,
    validate_prompts,
)
from sam3_ros.ros.params import ParamSpec


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny (under 100 bytes) png whose header declares width x height grey pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("codec", "shape"), [("png", (37, 53)), ("jpeg", (48, 64)),
                                              ("jpeg", (1, 1)), ("png", (1080, 1920))])
def test_compressed_header_size_matches_the_image(codec, shape):
    ok, data = cv2.imencode(f".{codec}", np.zeros((*shape, 3), np.uint8))
    assert ok
    assert compressed_image_size(data.reshape(-1), codec) == (shape[1], shape[0])


def test_progressive_jpeg_size():
    ok, data = cv2.imencode(".jpg", np.zeros((30, 40, 3), np.uint8),
                            [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and compressed_image_size(data.reshape(-1), "jpeg") == (40, 30)


def _jpeg_with_junk_before_dqt(junk: bytes, shape: tuple[int, int] = (32, 48)) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 255, (*shape, 3), np.uint8)
    data = cv2.imencode(".jpg", rgb)[1].tobytes()
    i = data.find(b"\xff\xdb")
    return data[:i] + junk + data[i:]


@pytest.mark.parametrize("junk", [
    b"\x00\x00",  # stray bytes
    b"\x12\xff\x00\x34",  # with a stuffed zero (FF 00) among them
    b"\xff\x00\x00\x00",
    b"\xff" * 5000,  # fill bytes: any number may precede a marker
])
def test_jpeg_with_bytes_between_segments_is_read_as_libjpeg_reads_it(junk):
    # libjpeg skips stray bytes before a marker (with a warning) and decodes the image; the
    # size check must not refuse what the decoder reads.
    data = _jpeg_with_junk_before_dqt(junk)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (32, 48, 3)
    rgb, _ = decode_compressed(np.frombuffer(data, np.uint8), "jpeg", max_pixels=16_777_216)
    assert rgb.shape == (32, 48, 3)


@pytest.mark.parametrize("data", [
    # Junk beyond the budget of skipped bytes.
    _jpeg_with_junk_before_dqt(b"\x00" * 70_000),
    # Markers without a length, repeated: the walk stops after a bounded number of them.
    b"\xff\xd8" + b"\xff\x01" * 1_000_000,
    # Stuffed zeros and fill bytes share the skipped-bytes budget.
    b"\xff\xd8" + b"\xff\x00" * 1_000_000,
    b"\xff\xd8" + b"\xff" * 1_000_000,
])
def test_jpeg_header_walk_is_bounded(data):
    with pytest.raises(InvalidImageError, match="start-of-frame"):
        compressed_image_size(np.frombuffer(data, np.uint8), "jpeg")


def test_small_png_declaring_a_huge_image_is_refused_before_decoding():
    data = np.frombuffer(_png_declaring(200_000, 200_000), np.uint8)
    assert data.size < 100
    with pytest.raises(InvalidImageError, match="max_image_pixels"):
        decode_compressed(data, "png", max_pixels=16_777_216)


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0\x00", b"GIF89a..."])
def test_truncated_or_foreign_headers_are_refused(data):
    with pytest.raises(InvalidImageError):
        decode_compressed(np.frombuffer(data, np.uint8), "", max_pixels=100)


@pytest.mark.parametrize(("width", "height", "limit", "ok"), [
    (640, 480, 640 * 480, True), (641, 480, 640 * 480, False), (10**9, 10**9, 2**62, True),
    (100_000, 100_000, 16_777_216, False)])
def test_check_image_size(width, height, limit, ok):
    if ok:
        check_image_size(width, height, limit)
    else:
        with pytest.raises(InvalidImageError, match="exceeds"):
            check_image_size(width, height, limit)


LIST = ParamSpec("prompts", ["person"], "")
FLOAT = ParamSpec("score_threshold", 0.5, "", min_value=0.0, max_value=1.0)
INT = ParamSpec("max_detections", 100, "", min_value=1, max_value=10000)


@pytest.mark.parametrize(("spec", "given", "expected"), [
    (LIST, "person", ["person"]), (LIST, ["a", "b"], ["a", "b"]), (LIST, ("a",), ["a"]),
    (FLOAT, 1, 1.0), (FLOAT, 0.25, 0.25), (INT, 7, 7)])
def test_coerce_accepts_near_miss_types(spec, given, expected):
    value, reason = spec.coerce(given)
    assert reason is None and value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("spec", "given"), [
    (LIST, 3), (LIST, [1, 2]), (FLOAT, "0.5"), (FLOAT, True), (INT, 3.5), (INT, "7"),
    (INT, True)])
def test_coerce_refuses_other_types_with_a_reason(spec, given):
    value, reason = spec.coerce(given)
    assert value is None and spec.name in reason


@pytest.mark.parametrize(("spec", "value", "match"), [
    (FLOAT, 1.5, "<= 1.0"), (FLOAT, float("nan"), "finite"), (INT, 0, ">= 1"),
    (LIST, ["x" * 5000], "longer"), (LIST, ["a"] * 2000, "items")])
def test_check_refuses_out_of_range(spec, value, match):
    assert match in spec.check(value)


@pytest.mark.parametrize("x_min,x_max", [(1000.121, 1000.124), (0.1, 0.2), (12345678.5, 12345679.0),
                                         (1e-7, 3e-7), (10.0, 80.0)])
def test_prompt_boxes_keep_every_digit(x_min, x_max):
    # `:g` saved 1000.121 .. 1000.124 as "1000.12 .. 1000.12": an empty box, refused when read.
    prompts = [PromptSpec("a", (BoxExemplar(x_min, 5.0, x_max, 9.0, True),)),
               PromptSpec("b", (BoxExemplar(x_min, 5.0, x_max + 1e-3, 9.0, True),))]
    items = format_prompt_boxes(prompts)
    assert parse_prompt_boxes(["a", "b"], items) == prompts
    assert list(validate_prompts(parse_prompt_boxes(["a", "b"], items), 64)) == prompts


def test_prompt_boxes_round_trip():
    prompts = [PromptSpec("person"), PromptSpec("", (BoxExemplar(1, 2, 3.5, 4, False),)),
               PromptSpec("cup", (BoxExemplar(10, 20, 80, 90), BoxExemplar(0, 0, 5, 5)))]
    items = format_prompt_boxes(prompts)
    assert items == ["1 1 2 3.5 4 -", "2 10 20 80 90 +", "2 0 0 5 5 +"]
    assert parse_prompt_boxes([p.text for p in prompts], items) == prompts
    assert format_prompt_boxes([PromptSpec("a")]) == [""]
    assert parse_prompt_boxes(["a"], [""]) == [PromptSpec("a")]


@pytest.mark.parametrize(("items", "match"), [
    (["0 1 2 3"], "expected"), (["5 1 2 3 4 +"], "index"), (["0 a 2 3 4 +"], "prompt_boxes"),
    (["0 1 2 3 4 *"], "expected"), (["-1 1 2 3 4 +"], "index")])
def test_prompt_boxes_refuse_malformed_items(items, match):
    with pytest.raises(InvalidPromptError, match=match):
        parse_prompt_boxes(["a", "b"], items)


def test_exemplar_limit_per_prompt():
    boxes = tuple(BoxExemplar(0, 0, 5 + i, 5) for i in range(MAX_EXEMPLARS_PER_PROMPT + 1))
    with pytest.raises(InvalidPromptError, match="exemplar boxes"):
        validate_prompts([PromptSpec("cup", boxes)], 64)


def test_exemplars_are_clipped_to_each_frame_never_an_error():
    prompt = PromptSpec("cup", (BoxExemplar(-10, 5, 50, 40), BoxExemplar(200, 200, 300, 300),
                                BoxExemplar(10, 10, 20, 20, False)))
    boxes, labels = exemplar_arrays([prompt], (100, 120))  # a smaller frame than expected
    np.testing.assert_array_equal(boxes[0, 0], [0, 5, 50, 40])
    assert labels.tolist() == [[1, -10, 0]]  # the box outside this frame is ignored here
    np.testing.assert_array_equal(boxes[0, 1], [0, 0, 0, 0])


def test_chunked_mask_upsampling_equals_one_call(monkeypatch):
    import torch

    from sam3_ros.core import segmenter

    low = torch.rand(7, 1, 12, 16).squeeze(1)
    whole = torch.nn.functional.interpolate(low.unsqueeze(0), size=(45, 61), mode="bilinear",
                                            align_corners=False).squeeze(0) > 0.5
    monkeypatch.setattr(segmenter, "UPSAMPLE_CHUNK_PIXELS", 45 * 61 * 2)  # 2 per chunk
    chunked = segmenter.upsample_masks(low, 45, 61, 0.5)
    assert chunked.dtype == np.bool_
    np.testing.assert_array_equal(chunked, whole.numpy())
