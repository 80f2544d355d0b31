"""FPN position encodings computed once per grid, not once per batch size.

The only place that changes a transformers SAM3 module's behaviour (transformers 5.x,
`modeling_sam3.py`). `Sam3VisionNeck.forward` asks its `Sam3SinePositionEmbedding` for the
encodings of each FPN level with the level's full shape (B, D, H, W), and transformers keeps
the answers in an LRU cache keyed by that shape (4 entries, shared by every model of the
process). The encodings depend on (H, W) only, yet a batched pass of B cameras caches B
identical copies: at 1008 px, 113 MB per frame, so a pass of 4 cameras keeps 451 MB alive
until the next pass replaces it (the multi-camera memory goal counts it).

`batch_one_positions` asks with batch 1 and expands the answer to B (a stride-0 view, no
copy); `install` makes a neck's position module do that. Values are identical. The heads only
read the encodings (flatten, add), and transformers' own cache already hands every caller the
same tensor, so no caller writes into it. A transformers version whose neck has no
`position_encoding` module is left as it is (`install` returns False and the caller logs it);
test/test_position_encoding.py fails then, so an upgrade is noticed.
"""

from __future__ import annotations

from typing import Any


def batch_one_positions(position_module: Any, shape: Any, device: Any, dtype: Any) -> Any:
    """Position encodings of a (B, D, H, W) feature map, as a view of the batch-1 ones.

    Args:
        position_module: A `Sam3SinePositionEmbedding` (called as the neck calls it).
        shape: (B, D, H, W) of the feature map.
        device / dtype: Of the feature map.

    Returns:
        (B, D, H, W) encodings; for B > 1 an expanded (stride-0) view of the (1, D, H, W) ones.
    """
    import torch

    batch = int(shape[0])
    forward = getattr(position_module, "_sam3_ros_original_forward", position_module.forward)
    one = forward(torch.Size((1, *shape[1:])), device, dtype)
    return one if batch == 1 else one.expand(batch, -1, -1, -1)


def install(neck: Any) -> bool:
    """Make `neck`'s position module compute batch-1 encodings and expand them (idempotent).

    Args:
        neck: A `Sam3VisionNeck` (`detector.vision_encoder.neck`).

    Returns:
        True when installed (or already), False when the neck has no position module to patch.
    """
    module = getattr(neck, "position_encoding", None)
    if module is None or not callable(getattr(module, "forward", None)):
        return False
    if hasattr(module, "_sam3_ros_original_forward"):
        return True
    original = module.forward

    def forward(shape: Any, device: Any, dtype: Any, mask: Any = None) -> Any:
        if mask is not None:  # masked encodings differ per frame: transformers' own path
            return original(shape, device, dtype, mask)
        return batch_one_positions(module, shape, device, dtype)

    # An instance attribute shadows the class's forward for this module only; nn.Module's
    # __call__ (hooks included) is unchanged, and there are no parameters or buffers.
    module._sam3_ros_original_forward = original
    module.forward = forward
    return True
