"""Property-based bad-input tier: whatever a camera or a client sends, the pure decoders and
request parsers either return a valid result or raise the package's own error with a reason;
nothing else escapes (an escaping exception is what could end a node)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sam3_ros.core.errors import InvalidImageError, InvalidPromptError
from sam3_ros.core.image_codec import (
    SUPPORTED_ENCODINGS,
    check_image_size,
    decode_compressed,
    decode_raw,
    to_rgb8,
)
from sam3_ros.core.prompts import BoxExemplar, PromptSpec, parse_prompt_boxes, validate_prompts
from sam3_ros.launch_plan import LaunchArgumentError, parse_prompts

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
LIMIT = 1 << 20

encodings = st.one_of(st.sampled_from(SUPPORTED_ENCODINGS), st.text(max_size=12))
dims = st.one_of(st.integers(-3, 40), st.sampled_from([0, 2**31 - 1, 2**32 - 1, 10**6]))


@SETTINGS
@given(width=dims, height=dims, step=dims, encoding=encodings,
       data_len=st.integers(0, 5000), big=st.booleans())
def test_raw_images_decode_or_refuse(width, height, step, encoding, data_len, big):
    data = bytes(np.random.default_rng(data_len).integers(0, 255, data_len, dtype=np.uint8))
    try:
        check_image_size(width, height, LIMIT)
        array = decode_raw(data, width, height, encoding, step, big)
        rgb = to_rgb8(array, encoding)
    except InvalidImageError as err:
        assert str(err)
        return
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8


finite = st.floats(allow_nan=True, allow_infinity=True, width=64)


@SETTINGS
@given(data=st.binary(max_size=300), fmt=st.sampled_from(
    ["", "jpeg", "png", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth png", "tiff",
     "16UC1; compressedDepth", "bgr8"]), prefix=st.sampled_from(
    [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"]))
def test_compressed_images_decode_or_refuse(data, fmt, prefix):
    try:
        array, encoding = decode_compressed(np.frombuffer(prefix + data, np.uint8), fmt,
                                            max_pixels=LIMIT)
    except InvalidImageError as err:
        assert str(err)
        return
    assert array.shape[0] * array.shape[1] <= LIMIT and encoding


boxes = st.builds(BoxExemplar, finite, finite, finite, finite, st.booleans())
prompt_specs = st.builds(PromptSpec, st.text(max_size=250), st.lists(boxes, max_size=40).map(
    tuple))


@SETTINGS
@given(prompts=st.lists(prompt_specs, max_size=70),
       size=st.one_of(st.none(), st.tuples(st.integers(1, 5000), st.integers(1, 5000))))
def test_prompt_sets_validate_or_refuse(prompts, size):
    try:
        valid = validate_prompts(prompts, 64, size)
    except InvalidPromptError as err:
        assert str(err)
        return
    assert 1 <= len(valid) <= 64
    for prompt in valid:
        for box in prompt.exemplars:
            assert all(math.isfinite(v) for v in box.xyxy)


@SETTINGS
@given(texts=st.lists(st.text(max_size=20), min_size=1, max_size=5),
       items=st.lists(st.text(max_size=40), max_size=8))
def test_prompt_boxes_parameter_parses_or_refuses(texts, items):
    try:
        prompts = parse_prompt_boxes(texts, items)
    except InvalidPromptError as err:
        assert "prompt_boxes" in str(err)
        return
    assert [p.text for p in prompts] == texts


@SETTINGS
@given(text=st.text(max_size=60))
def test_launch_prompts_parse_or_refuse(text):
    try:
        phrases = parse_prompts(text)
    except LaunchArgumentError as err:
        assert "prompts" in str(err)
        return
    assert phrases and all(isinstance(p, str) for p in phrases)


@pytest.fixture(scope="module")
def tracker_session(tiny_checkpoint):
    from sam3_ros.core.model_loading import load_sam3
    from sam3_ros.core.tracker import TrackerConfig, TrackerSession

    loaded = load_sam3(str(tiny_checkpoint), device="cpu", with_tracker=True)
    session = TrackerSession(loaded, TrackerConfig(max_objects=4))
    session.process_frame(np.zeros((48, 64, 3), np.uint8), stamp_ns=1)
    return session


ids = st.one_of(st.integers(-5, 5), st.sampled_from([2**31 - 1, 2**31, -2**31, 2**63, -1]))
points = st.lists(st.tuples(finite, finite, st.booleans()), max_size=80)
object_specs = st.builds(
    lambda oid, label, pts, box: (oid, label, tuple(pts), box), ids, st.text(max_size=300),
    points, st.one_of(st.none(), st.tuples(finite, finite, finite, finite)))


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(objects=st.lists(object_specs, max_size=6), refine=st.booleans())
def test_tracker_requests_are_queued_or_refused(tracker_session, objects, refine):
    from sam3_ros.core.tracker import ObjectPromptSpec

    specs = [ObjectPromptSpec(*o) for o in objects]
    try:
        assigned = tracker_session.add_objects(specs, refine=refine)
    except InvalidPromptError as err:
        assert str(err)
        return
    finally:
        tracker_session.reset()
    assert len(assigned) == len(specs)
    assert all(0 <= i <= 2**31 - 1 for i in assigned)
