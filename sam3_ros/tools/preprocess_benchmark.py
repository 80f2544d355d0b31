"""Benchmark: transformers' processor vs `DevicePreprocessor`, and their parity.

    python -m sam3_ros.tools.preprocess_benchmark [--device cpu] [--sizes 112 1008]
        [--frames 480x640 720x1280] [--repeats 30] [--threads N]

For each model size S (a `Sam3ImageProcessor` built with size S x S, SAM3's other settings at
their defaults: bilinear, 1/255, mean = std = 0.5) and frame size, times the processor's path as
`Sam3Segmenter` runs it (processor on the CPU, then `.to(device)`) and the device path on random
uint8 frames, median of --repeats after one warm-up call (on CUDA with a synchronize after each
call), and prints the largest and mean absolute difference of their outputs (normalised units).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np


def _median_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 1008])
    parser.add_argument("--frames", nargs="+", default=["480x640", "720x1280"],
                        help="HxW of the input frames")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)

    import torch
    from transformers import Sam3ImageProcessor

    from sam3_ros.core.preprocess import DevicePreprocessor

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rng = np.random.default_rng(0)
    print(f"device {device}, dtype {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, median of {args.repeats}")
    print("| model size | frame (HxW) | processor ms | device path ms | speed-up "
          "| max abs diff | mean abs diff |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        processor = Sam3ImageProcessor(size={"height": size, "width": size})
        device_pre = DevicePreprocessor(processor, device, dtype)
        for frame in args.frames:
            height, width = (int(v) for v in frame.lower().split("x"))
            rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)

            def with_processor(rgb: np.ndarray = rgb, processor=processor) -> object:
                pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
                return pixels.to(device, dtype)

            def on_device(rgb: np.ndarray = rgb, device_pre=device_pre) -> object:
                return device_pre(rgb)

            processor_ms = _median_ms(with_processor, args.repeats, sync)
            device_ms = _median_ms(on_device, args.repeats, sync)
            diff = (on_device().float() - with_processor().float()).abs()
            print(f"| {size} | {height}x{width} | {processor_ms:.2f} | {device_ms:.2f} | "
                  f"{processor_ms / device_ms:.1f}x | {diff.max().item():.4g} | "
                  f"{diff.mean().item():.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
