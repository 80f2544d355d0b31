"""The node trace tool: hop arithmetic, and one short run against the real node over DDS."""

from __future__ import annotations

import pytest

from sam3_ros.tools.node_trace import HOPS, frame_hops, hop_medians

MS = 1_000_000


def test_hop_medians_follow_the_frame_path():
    sent = {1: 0, 2: 100 * MS}
    events = []
    for sec, base in ((1, 0), (2, 100 * MS)):
        t = base
        for name, step in (("cb_in", 2), ("cb_out", 0), ("prep_in", 1), ("prep_out", 1),
                           ("proc_in", 10), ("proc_out", 20), ("pub_in", 1), ("pub_out", 1)):
            t += step * MS
            events.append((sec, name, t))
    events.append((99, "cb_in", 5))  # the warm-up frame: not sent in the timed loop
    received = {1: 37 * MS, 2: 100 * MS + 38 * MS}  # frame 2: 1 ms more on the way back
    hops = hop_medians(sent, received, events)
    assert list(hops) == [label for _, _, label in HOPS] + ["total"]
    assert hops["camera publish -> node callback"] == (2.0, 2)
    assert hops["heads + post-processing"] == (20.0, 2)
    assert hops["node publish -> subscriber callback"] == (1.5, 2)
    assert hops["total"] == (37.5, 2)


def test_lost_frames_count_only_where_they_were_seen():
    hops = hop_medians({1: 0, 2: 10 * MS}, {1: 5 * MS},
                       [(1, "cb_in", 1 * MS), (2, "cb_in", 12 * MS)])
    assert hops["camera publish -> node callback"] == (1.5, 2)
    assert hops["total"] == (5.0, 1)
    assert "heads + post-processing" not in hops
    assert frame_hops({1: 0, 2: 10 * MS}, {1: 5 * MS},
                      [(1, "cb_in", 1 * MS), (2, "cb_in", 12 * MS)]) == {
        1: {"camera publish -> node callback": 1.0, "total": 5.0},
        2: {"camera publish -> node callback": 2.0}}


def test_trace_of_the_real_node(tiny_checkpoint):
    pytest.importorskip("rclpy")
    from sam3_ros.tools.node_trace import run

    # 160x120: below Fast DDS's default shared-memory segment, so no profile is needed here.
    result = run(str(tiny_checkpoint), frames=3, pause_s=0.05, prompts=["mug"], width=160,
                 height=120)
    assert result["received"] == 3
    hops = result["hops"]
    # Every hop of the path was seen for every frame, and each frame's hops add up to its
    # total (medians of hops need not add up to the median total on a loaded machine).
    assert all(n == 3 for _, n in hops.values()), hops
    for frame in result["frame_hops"].values():
        assert len(frame) == len(hops)
        assert sum(ms for label, ms in frame.items() if label != "total") == pytest.approx(
            frame["total"], abs=1e-3)
