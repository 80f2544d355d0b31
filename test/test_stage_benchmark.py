"""The per-stage benchmark: its pure helpers, and one short run on the tiny checkpoint (torch,
ONNX Runtime fp32 exported on the way, and a refused provider). Nothing here asserts a time."""

from __future__ import annotations

import importlib.util
import re

import pytest

from sam3_ros.tools.stage_benchmark import (
    STAGE_TITLES,
    STAGES,
    BackendSpec,
    format_stat,
    format_table,
    main,
    parse_backend,
    prompt_texts,
    summarize,
)


def test_summarize_median_and_p90_from_five_samples():
    assert summarize([]) == {"median": None, "p90": None, "n": 0}
    few = summarize([0.003, 0.001, 0.002])
    assert few["median"] == pytest.approx(2.0) and few["p90"] is None and few["n"] == 3
    ten = summarize([k / 1000 for k in range(1, 11)])  # 1..10 ms
    assert ten["median"] == pytest.approx(5.5)
    assert ten["p90"] == pytest.approx(9.1)  # linear interpolation, inclusive
    five = summarize([0.001] * 5)
    assert five["p90"] == pytest.approx(1.0)


def test_format_stat_cells():
    assert format_stat(None) == "-"
    assert format_stat({"median": None, "p90": None}) == "-"
    assert format_stat({"median": 1.234, "p90": None}) == "1.23"
    assert format_stat({"median": 1.234, "p90": 5.0}) == "1.23 / 5.00"


def test_parse_backend_variants_and_defaults():
    assert parse_backend("torch") == BackendSpec("torch", "torch", "float32")
    bf16 = parse_backend("torch:bfloat16:int8_dynamic")
    assert (bf16.dtype, bf16.quantization) == ("bfloat16", "int8_dynamic")
    assert parse_backend("torch", dtype="bfloat16", quantization="int8_weight_only") == \
        BackendSpec("torch", "torch", "bfloat16", "int8_weight_only")
    ort = parse_backend("onnxruntime:int8-dynamic")
    assert (ort.precision, ort.provider, ort.dtype) == ("int8-dynamic", "cpu", "float32")
    assert parse_backend("onnxruntime", device="cuda:0").provider == "cuda"
    trt = parse_backend("onnxruntime:fp32:tensorrt:bfloat16")
    assert (trt.precision, trt.provider, trt.dtype) == ("fp32", "tensorrt", "bfloat16")
    heads = parse_backend("torch_int8:compiled-heads:bfloat16")
    assert (heads.backend, heads.dtype, heads.compile_heads) == ("torch_int8", "bfloat16", True)
    assert heads.label() == "torch_int8 rest bfloat16 compiled heads"
    assert not parse_backend("onnxruntime:int8-dynamic").compile_heads
    static = parse_backend("torch_int8:static:bfloat16")
    assert (static.static, static.dtype, static.label()) == (
        True, "bfloat16", "torch_int8 static rest bfloat16")
    assert not heads.static
    for bad in ("tensorflow", "torch:fp32", "onnxruntime:int8_dynamic", "torch:float32:float16",
                "torch:compiled-heads:compiled-heads", "torch:compiled_heads", "torch:static",
                "torch_int8:static:static"):
        with pytest.raises(ValueError, match="backend"):
            parse_backend(bad)


def test_prompt_texts_are_distinct():
    texts = prompt_texts(40)
    assert len(texts) == len(set(texts)) == 40
    assert prompt_texts(1) == ["person"]


def test_format_table_not_run_row_keeps_its_reason_in_one_cell():
    table = format_table([{"label": "onnxruntime fp32 cuda", "prompts": [1, 4], "rows": [],
                           "not_run": "no provider | here"}], "header", repeats=2)
    row = next(line for line in table.splitlines() if line.startswith("| onnxruntime"))
    assert "not run: no provider \\| here" in row


def _messages_importable() -> bool:
    try:
        return (importlib.util.find_spec("rclpy") is not None
                and importlib.util.find_spec("sam3_ros.msg") is not None)
    except ImportError:
        return False


def test_stage_benchmark_runs_torch_and_onnxruntime_on_the_tiny_checkpoint(
        tiny_checkpoint, tmp_path, capsys):
    output = tmp_path / "table.md"
    rc = main(["--model", str(tiny_checkpoint), "--backends", "torch", "onnxruntime:fp32",
               "onnxruntime:fp32:cuda", "--prompts", "1", "4", "--frames", "2", "--warmup",
               "1", "--score-threshold", "0", "--threads", "1", "--workdir", str(tmp_path / "work"),
               "--output", str(output)])
    assert rc == 0
    table = output.read_text()
    assert table.strip() == capsys.readouterr().out.strip()
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| backend |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    for stage in STAGES:
        assert STAGE_TITLES[stage] in columns
    for name in ("prompts", "instances", "frame total", "FPS", "peak RSS MB", "peak CUDA MB"):
        assert name in columns
    # The export into the work folder was logged and kept for later runs.
    assert any(p.suffix == ".onnx" for p in (tmp_path / "work" / "onnx").iterdir())

    def row(label: str, prompts: int) -> dict[str, str]:
        found = [line for line in lines if line.startswith(f"| {label} | {prompts} |")]
        assert len(found) == 1, (label, prompts, table)
        cells = [c.strip() for c in found[0].strip("|").split("|")]
        assert len(cells) == len(columns), found[0]
        return dict(zip(columns, cells, strict=True))

    for label in ("torch float32", "onnxruntime fp32 cpu heads float32"):
        for prompts in (1, 4):
            cells = row(label, prompts)
            # Score threshold 0 keeps every query: the mask and message stages have work.
            assert float(cells["instances"]) > 0
            for stage in ("preprocess", "backbone", "text first run", "text cached", "heads",
                          "masks", "frame total", "FPS", "peak RSS MB"):
                assert float(cells[stage]) >= 0, (stage, cells)
            assert cells["peak CUDA MB"] == "-"
            if _messages_importable():
                assert float(cells["messages"]) >= 0
            else:
                assert cells["messages"] == "skipped"
    refused = [line for line in lines if line.startswith("| onnxruntime fp32 cuda")]
    assert len(refused) == 1
    # Either this onnxruntime lacks the CUDA provider, or the model is on the CPU.
    assert "not run: onnx_provider 'cuda'" in refused[0]
    assert "CUDAExecutionProvider" in refused[0] or "CUDA device" in refused[0]


def test_stage_timer_times_segment_and_changes_nothing(tiny_checkpoint):
    import numpy as np

    from sam3_ros.core.model_loading import load_sam3
    from sam3_ros.core.prompts import PromptSpec
    from sam3_ros.core.segmenter import Sam3Segmenter, SegmenterConfig, StageTimer

    segmenter = Sam3Segmenter(load_sam3(str(tiny_checkpoint)))
    prompts = segmenter.encode_prompts([PromptSpec("cup"), PromptSpec("dog")])
    config = SegmenterConfig(score_threshold=0.0)  # every query kept: masks run
    rgb = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    plain = segmenter.segment(rgb, prompts, config)
    assert segmenter.stage_timer is None
    timer = StageTimer(segmenter.loaded.device)
    segmenter.stage_timer = timer
    timed = segmenter.segment(rgb, prompts, config)
    assert set(timer.times) == {"preprocess", "backbone", "heads", "masks"}
    assert all(seconds >= 0 for seconds in timer.times.values())
    np.testing.assert_array_equal(timed.masks, plain.masks)
    np.testing.assert_array_equal(timed.scores, plain.scores)
    # Already preprocessed pixel values: no preprocess stage; an empty result: no masks stage.
    timer.clear()
    segmenter.segment(rgb, prompts, SegmenterConfig(score_threshold=1.0),
                      pixel_values=segmenter.preprocess(rgb))
    assert set(timer.times) == {"backbone", "heads"}


def test_a_static_int8_spec_needs_calibration_frames():
    from sam3_ros.tools.stage_benchmark import main

    with pytest.raises(SystemExit, match=re.escape("torch_int8:...:static backend needs "
                                                   "--int8-calibration FOLDER")):
        main(["--backends", "torch", "torch_int8:static"])


def test_calibration_frames_without_a_static_spec_are_refused():
    with pytest.raises(SystemExit, match=re.escape("--int8-calibration is for "
                                                   "torch_int8:...:static backends")):
        main(["--backends", "torch_int8", "--int8-calibration", "/frames"])


@pytest.mark.parametrize("count", ["0", "65"])
def test_calibration_frame_counts_out_of_range_are_refused_at_once(count, capsys):
    from sam3_ros.tools import backbone_benchmark, stage_benchmark

    with pytest.raises(SystemExit):
        stage_benchmark.main(["--backends", "torch_int8:static", "--int8-calibration", "/f",
                              "--int8-calibration-frames", count])
    assert "--int8-calibration-frames must be in 1..64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        backbone_benchmark.main(["torch", "--workdir", "/tmp/unused", "--int8",
                                 "--int8-calibration", "/f",
                                 "--int8-calibration-frames", count])
    assert "--int8-calibration-frames must be in 1..64" in capsys.readouterr().err
