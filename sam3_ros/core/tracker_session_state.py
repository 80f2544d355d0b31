"""Everything that touches the private state of transformers' tracker session, in one place.

`Sam3TrackerVideoInferenceSession` (transformers 5.x) has no API to remove an object or to
forget old frames, and it keeps every frame's outputs, every processed frame and every prompt
for ever. `TrackerSession` needs both, so this module edits the session's tables directly; a
transformers upgrade that changes them breaks this file only (the parity tests in
test/test_tracker_core.py drive a hand-written transformers session and catch it).

What `Sam3TrackerVideoModel.forward` reads from the session when it runs on frame q
(read in modeling_sam3_tracker_video.py, transformers 5.24), per object:

- `output_dict_per_obj[i]["non_cond_frame_outputs"][q - k]`: `maskmem_features` and
  `maskmem_pos_enc` for k = 1 .. num_maskmem - 1 (6), `object_pointer` for
  k = 1 .. max_object_pointers_in_encoder - 1 (15).
- `output_dict_per_obj[i]["cond_frame_outputs"]` (frames with prompts):
  the keys of all of them, to select the max_cond_frame_num (4) frames closest to q, whose
  `maskmem_*` are read; `maskmem_*` of an unselected one within k <= num_maskmem - 1 (it
  stands in for the missing non-conditioning entry); `object_pointer` of EVERY one at or
  before q (transformers does not limit pointers to the selected frames); `pred_masks` and
  `object_score_logits` of q itself, when q is a conditioning frame re-run without new input.
- `point_inputs_per_obj[i][q]`, `mask_inputs_per_obj[i][q]`, `frames_tracked_per_obj[i][q]`:
  on q only (an object with new input on q: is q its first conditioning frame?).
- the vision features of q (`cache`), else `processed_frames[q]` to recompute them.
- `num_frames` (= len(processed_frames)): on a non-streaming call (a prompt on a held frame)
  it bounds the object pointers read and normalises their temporal offsets; pruned processed
  frames made it 1 and the offsets divided by zero (NaN scores for every other object).
- nothing else: `high_res_masks` is stored but never read back.

Future model calls run on the next frames or on a held frame (a prompt by stamp), so on
q >= `first_query_frame`; `prune` keeps exactly what such calls can still read.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any


@functools.cache
def _session_class() -> type:
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
        Sam3TrackerVideoInferenceSession,
    )

    class StreamingInferenceSession(Sam3TrackerVideoInferenceSession):
        """A tracker session whose frame count survives pruning of `processed_frames`."""

        frames_in_stream = 0
        """Frames of the stream so far (what len(processed_frames) would be unpruned)."""

        @property
        def num_frames(self) -> int:
            return self.frames_in_stream

    return StreamingInferenceSession


def new_session(device: Any, dtype: Any, vision_frames: int) -> Any:
    """An empty streaming tracker session.

    Args:
        device: torch.device of the model (inference, state and frame storage).
        dtype: torch dtype of the model.
        vision_frames: Frames whose projected vision features the session caches.
    """
    return _session_class()(
        inference_device=device, inference_state_device=device, video_storage_device=device,
        dtype=dtype, max_vision_features_cache_size=vision_frames)


def set_frames_in_stream(session: Any, count: int) -> None:
    """Tell the session how many frames the stream has had (its `num_frames`)."""
    session.frames_in_stream = count


def held_sizes(session: Any) -> dict[str, int]:
    """Sizes of the session's tables that could grow with the stream (`memory_stats`).

    Returns:
        frames_held (processed frames), outputs_held (per-object memory-bank entries, all
        objects), max_outputs_per_object, inputs_held (point/mask prompts), tracked_entries
        and vision_features_held (frames in the session's vision-feature cache).
    """
    outputs = [len(d["cond_frame_outputs"]) + len(d["non_cond_frame_outputs"])
               for d in session.output_dict_per_obj.values()]
    return {
        "frames_held": len(session.processed_frames or {}),
        "outputs_held": sum(outputs),
        "max_outputs_per_object": max(outputs, default=0),
        "inputs_held": sum(len(d) for d in session.point_inputs_per_obj.values())
        + sum(len(d) for d in session.mask_inputs_per_obj.values()),
        "tracked_entries": sum(len(d) for d in session.frames_tracked_per_obj.values()),
        # The cache has no size API.
        "vision_features_held": len(session.cache._vision_features),
    }


def remove_objects(session: Any, object_ids: Sequence[int]) -> None:
    """Remove objects from the session (transformers has no API for it).

    The per-object tables are rebuilt with contiguous indices for the objects that stay, in
    their order: transformers runs objects in index order and batches their memory encoding.
    """
    gone = set(object_ids)
    keep = [oid for oid in session.obj_ids if oid not in gone]
    old_idx = {oid: session._obj_id_to_idx[oid] for oid in keep}
    tables = ("point_inputs_per_obj", "mask_inputs_per_obj", "output_dict_per_obj",
              "frames_tracked_per_obj")
    saved = {name: getattr(session, name) for name in tables}
    session._obj_id_to_idx.clear()
    session._obj_idx_to_id.clear()
    for name in tables:
        setattr(session, name, {})
    for new, oid in enumerate(keep):
        session._obj_id_to_idx[oid] = new
        session._obj_idx_to_id[new] = oid
        for name in tables:
            getattr(session, name)[new] = saved[name][old_idx[oid]]
    session.obj_ids = list(keep)
    session.obj_with_new_inputs = [i for i in session.obj_with_new_inputs if i in keep]


def points_on_frame(session: Any, object_id: int, frame_idx: int) -> tuple[Any, Any] | None:
    """(coords (1, 1, P, 2), labels (1, 1, P)) prompted on a frame, or None."""
    if object_id not in session._obj_id_to_idx:
        return None
    inputs = session.point_inputs_per_obj[session._obj_id_to_idx[object_id]].get(frame_idx)
    return None if inputs is None else (inputs["point_coords"], inputs["point_labels"])


def prune(session: Any, model_config: Any, frame_idx: int, first_query_frame: int,
          frames_read_back: int, max_prompt_frames: int) -> None:
    """Drop session state that no later model call reads (bounded memory, same results).

    Args:
        session: The tracker session, after the model ran on `frame_idx`.
        model_config: The tracker's `Sam3TrackerVideoConfig` (num_maskmem, max_cond_frame_num).
        frame_idx: The frame just processed.
        first_query_frame: Oldest frame a later model call may run on (the oldest frame a
            prompt may still refer to).
        frames_read_back: A call on frame q may read non-conditioning outputs of frames
            q - 1 .. q - frames_read_back: max(num_maskmem, max_object_pointers_in_encoder) - 1
            (15 for SAM3) keeps everything SAM3 reads; less bounds memory tighter and
            changes results.
        max_prompt_frames: Conditioning (prompted) frames kept per object. transformers reads
            the object pointer of every conditioning frame at or before the frame it runs on,
            so their number is not bounded by the model: an object prompted on more frames
            than this loses its oldest prompt frames (the only pruning here that can change a
            result). Older prompt frames no call can select any more are reduced to their
            object pointer (one (1, hidden) vector each).
    """
    oldest_read = first_query_frame - frames_read_back
    if session.processed_frames:
        # A later call reads a processed frame only when its vision features are not cached;
        # the cache holds every frame a call may run on.
        for f in [f for f in session.processed_frames if f != frame_idx]:
            del session.processed_frames[f]
    for obj_idx, outputs in session.output_dict_per_obj.items():
        non_cond = outputs["non_cond_frame_outputs"]
        for f in [f for f in non_cond if f < oldest_read]:
            del non_cond[f]
        for out in non_cond.values():
            # Only the memory features and the object pointer are read back.
            out.pop("high_res_masks", None)
            out.pop("pred_masks", None)
        _prune_cond(outputs["cond_frame_outputs"], first_query_frame,
                    int(model_config.num_maskmem), int(model_config.max_cond_frame_num),
                    max_prompt_frames)
        for table in (session.frames_tracked_per_obj[obj_idx],
                      session.point_inputs_per_obj[obj_idx],
                      session.mask_inputs_per_obj[obj_idx]):
            for f in [f for f in table if f < first_query_frame]:
                del table[f]


def _prune_cond(cond: dict[int, dict[str, Any]], first_query_frame: int, num_maskmem: int,
                max_cond_frame_num: int, max_prompt_frames: int) -> None:
    """Keep what calls on frames q >= first_query_frame read of the conditioning outputs.

    transformers selects, for frame q, the conditioning frame closest before q, the closest at
    or after q, then the closest others up to max_cond_frame_num. Frames before
    first_query_frame are all before q, so the selected ones among them are always the newest
    ones: at most max_cond_frame_num of them can ever be selected (and new prompt frames, all
    >= first_query_frame, only push them further down). An unselected one is also read as
    plain memory when it lies within num_maskmem - 1 frames of q.
    """
    frames = sorted(cond)
    for f in frames[:-max_prompt_frames]:
        del cond[f]
    frames = frames[-max_prompt_frames:]
    old = [f for f in frames if f < first_query_frame]
    if max_cond_frame_num < 0:  # transformers: -1 = every conditioning frame is selected
        full = set(frames)
    else:
        full = set(old[-max_cond_frame_num:] if max_cond_frame_num else [])
        full.update(f for f in frames if f >= first_query_frame - (num_maskmem - 1))
    for f in frames:
        out = cond[f]
        out.pop("high_res_masks", None)
        if f not in full:
            for key in [k for k in out if k != "object_pointer"]:
                del out[key]
        elif f < first_query_frame:
            # Masks and scores are reused only when a call runs on the frame itself.
            out.pop("pred_masks", None)
            out.pop("object_score_logits", None)
