"""Write a miniature, randomly initialised SAM3 checkpoint folder for tests and the demo.

The folder holds what a real checkpoint folder (e.g. a download of `facebook/sam3`) holds: a
`config.json`, `model.safetensors`, a real (tiny, byte-level) CLIP tokenizer and the processor
configuration. It loads through exactly the code path a real checkpoint uses
(`from_pretrained(folder)`), so the package's real model code runs in tests and in the demo.
Its weights are random: its masks and scores mean nothing.

    python -m sam3_ros.tools.make_tiny_checkpoint OUTPUT_DIR [--seed 0] [--variant lite_text]

Variants: `sam3_video` (default; like facebook/sam3: detector + memory tracker) and `lite_text`
(a `Sam3LiteTextModel` image checkpoint: the SAM3 detector with the MobileCLIP-style LiteText
text encoder; transformers has no LiteText video model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

TINY_IMAGE_SIZE_PX = 112
"""Model input size of the tiny checkpoint (the real SAM3 uses 1008)."""
FPN_WIDTH = 128
"""Width of the FPN neck and the heads: the SAM2-style tracker needs more than its 64-channel
memory (object pointers are split into memory-sized tokens)."""

_VOCAB_WORDS = (
    "mug bottle person cup chair table dog cat robot gripper box ball car red blue green a the of"
)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level mapping: every byte gets a printable unicode character.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _tokenizer_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    byte_chars = list(_bytes_to_unicode().values())
    vocab_tokens: list[str] = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[str] = []
    # A few real merges so that common prompt words become single tokens.
    for word in _VOCAB_WORDS.split():
        token = word[0]
        for i, ch in enumerate(word[1:], start=1):
            last = i == len(word) - 1
            right = ch + "</w>" if last else ch
            merges.append(f"{token} {right}")
            token = token + right
            if token not in vocab_tokens:
                vocab_tokens.append(token)
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_tokens))}
    return vocab, [tuple(m.split(" ")) for m in dict.fromkeys(merges)]


def tiny_sam3_config(bos_token_id: int, eos_token_id: int):
    """A `Sam3Config` with 32-wide layers and 112 px input (the real model's structure)."""
    from transformers import Sam3Config

    vision_config = _tiny_vision_config()
    text_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
        "vocab_size": 1024,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
    }
    return Sam3Config(vision_config=vision_config, text_config=text_config, **_tiny_heads())


def _tiny_vision_config() -> dict:
    feature_sizes = [[TINY_IMAGE_SIZE_PX // 14 * 4] * 2, [TINY_IMAGE_SIZE_PX // 14 * 2] * 2,
                     [TINY_IMAGE_SIZE_PX // 14] * 2]
    return {
        "model_type": "sam3_vision_model",
        "backbone_config": {
            "model_type": "sam3_vit_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIZE_PX,
            "patch_size": 14,
            "window_size": 4,
            "global_attn_indexes": [1],
            "pretrain_image_size": TINY_IMAGE_SIZE_PX,
        },
        "fpn_hidden_size": FPN_WIDTH,
        "backbone_feature_sizes": feature_sizes,
    }


def _tiny_heads() -> dict:
    return {
        "geometry_encoder_config": {"hidden_size": FPN_WIDTH, "num_layers": 1,
                                    "num_attention_heads": 2, "intermediate_size": 64},
        "detr_encoder_config": {"hidden_size": FPN_WIDTH, "num_layers": 1,
                                "num_attention_heads": 2, "intermediate_size": 64},
        "detr_decoder_config": {"hidden_size": FPN_WIDTH, "num_layers": 1,
                                "num_attention_heads": 2, "intermediate_size": 64,
                                "num_queries": 20},
        "mask_decoder_config": {"hidden_size": FPN_WIDTH, "num_upsampling_stages": 3,
                                "num_attention_heads": 2},
    }


def tiny_sam3_lite_text_config():
    """A `Sam3LiteTextConfig`: the tiny detector of `tiny_sam3_config` with a tiny LiteText
    (MobileCLIP-style, RepMixer first and last layer) text encoder."""
    from transformers.models.sam3_lite_text import Sam3LiteTextConfig

    # Its pooling takes the highest token id as end of text, as CLIP's vocabulary has it
    # (<|endoftext|> is this tokenizer's last id too).
    text_config = {"hidden_size": 32, "intermediate_size": 64, "projection_dim": 32,
                   "num_hidden_layers": 3, "num_attention_heads": 2,
                   "max_position_embeddings": 32, "vocab_size": 1024, "repmixer_kernel_size": 3}
    return Sam3LiteTextConfig(vision_config=_tiny_vision_config(), text_config=text_config,
                              **_tiny_heads())


def tiny_sam3_video_config(detector_config):
    """A `Sam3VideoConfig`: the tiny detector plus a tiny SAM2-style memory tracker."""
    from transformers import Sam3VideoConfig

    size = TINY_IMAGE_SIZE_PX
    tracker_config = {
        "vision_config": detector_config.vision_config.to_dict(),
        "image_size": size,
        "prompt_encoder_config": {"hidden_size": FPN_WIDTH, "image_size": size,
                                  "patch_size": 14},
        # One layer wherever the structure allows: tests and soak runs track several objects
        # for hundreds of frames on 2 CPU cores, and the tracker's cost is per object.
        "mask_decoder_config": {"hidden_size": FPN_WIDTH, "mlp_dim": 64, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        "memory_attention_hidden_size": FPN_WIDTH,
        "memory_attention_num_layers": 1,
        "memory_attention_feed_forward_hidden_size": 64,
        "memory_attention_rope_feat_sizes": [size // 14, size // 14],
        "memory_encoder_hidden_size": FPN_WIDTH,
        "memory_encoder_output_channels": 64,
        "mask_downsampler_embed_dim": FPN_WIDTH,
        "memory_fuser_embed_dim": FPN_WIDTH,
        "memory_fuser_intermediate_dim": 64,
        "memory_fuser_num_layers": 1,
    }
    # fill_hole_area=0: hole filling would fetch a compiled kernel from the hub.
    return Sam3VideoConfig(detector_config=detector_config.to_dict(),
                           tracker_config=tracker_config, fill_hole_area=0, hotstart_delay=0)


VARIANTS = ("sam3_video", "lite_text")


def make_tiny_checkpoint(output_dir: str | Path, seed: int = 0,
                         variant: str = "sam3_video") -> Path:
    """Create (or overwrite) a tiny SAM3 video checkpoint folder (takes ~0.3 s after imports).

    Like a download of facebook/sam3 it holds a `Sam3VideoModel` (detector + tracker sharing one
    vision backbone), the `Sam3Processor` configuration and tokenizer, and the video
    preprocessor configuration, so every SAM3 class a user would load from the real checkpoint
    loads from it: `Sam3Model` (the detector part), `Sam3VideoModel`, `Sam3TrackerVideoModel`
    (the tracker part, backbone renamed by transformers), `Sam3Processor`,
    `Sam3VideoProcessor` and `Sam3TrackerVideoProcessor`.

    With variant="lite_text" it holds a `Sam3LiteTextModel` image checkpoint (model_type
    'sam3_lite_text') with the same processor and tokenizer instead.

    Args:
        output_dir: Folder to write; created if missing.
        seed: Seed of the random initialisation (same seed, same weights).
        variant: One of `VARIANTS`.

    Returns:
        The folder, ready for `.from_pretrained` of the classes above.
    """
    import torch
    from transformers import (
        CLIPTokenizer,
        Sam2VideoVideoProcessor,
        Sam3ImageProcessor,
        Sam3Processor,
        Sam3VideoModel,
    )

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _tokenizer_vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=32)
    torch.manual_seed(seed)
    if variant == "lite_text":
        from transformers.models.sam3_lite_text import Sam3LiteTextModel

        model = Sam3LiteTextModel(tiny_sam3_lite_text_config()).eval()
    else:
        config = tiny_sam3_video_config(
            tiny_sam3_config(vocab["<|startoftext|>"], vocab["<|endoftext|>"]))
        # A video checkpoint, like facebook/sam3: Sam3Model loads its detector part,
        # Sam3VideoModel the detector and the tracker sharing one vision backbone.
        model = Sam3VideoModel(config).eval()
    model.save_pretrained(folder)
    image_processor = Sam3ImageProcessor(
        size={"height": TINY_IMAGE_SIZE_PX, "width": TINY_IMAGE_SIZE_PX},
        mask_size={"height": TINY_IMAGE_SIZE_PX // 4, "width": TINY_IMAGE_SIZE_PX // 4},
    )
    processor = Sam3Processor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(folder)
    # The video processors (Sam3VideoProcessor, Sam3TrackerVideoProcessor) read their frame
    # preprocessing from video_preprocessor_config.json: the same resize and normalisation as
    # the image processor, so a streamed frame equals a processed image bit for bit.
    video_processor = Sam2VideoVideoProcessor(
        size={"height": TINY_IMAGE_SIZE_PX, "width": TINY_IMAGE_SIZE_PX},
        image_mean=list(image_processor.image_mean), image_std=list(image_processor.image_std))
    video_processor.save_pretrained(folder)
    return folder


def temporary_tiny_checkpoint() -> str:
    """A tiny random checkpoint in a temporary folder removed when the process exits (the
    tools' default model; each run left 17 MB in /tmp)."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="sam3_tiny_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(make_tiny_checkpoint(folder))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=VARIANTS, default="sam3_video",
                        help="sam3_video (detector + tracker) or lite_text (Sam3LiteTextModel)")
    parser.add_argument("--force", action="store_true",
                        help="write into a folder that is not empty (its model files are "
                             "replaced by random ones)")
    args = parser.parse_args(argv)
    out = args.output_dir
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.force)):
        # A mistyped path to a downloaded checkpoint would get random weights.
        parser.error(f"{out} is not an empty folder (a checkpoint there would be overwritten "
                     "with RANDOM weights; --force to do it anyway)")
    folder = make_tiny_checkpoint(out, seed=args.seed, variant=args.variant)
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
