"""The benchmark's pure statistics (the benchmark itself is run by hand, see README)."""

from __future__ import annotations

import pytest

from sam3_ros.tools.benchmark import p90, paired_stats


def test_paired_stats_compare_each_frame_with_its_own_bare_call():
    # A drifting machine: both samples of a frame scale together, the ratio stays 1.1.
    pairs = [(0.010 * k, 0.011 * k) for k in (1, 2, 3, 4, 5)]
    stats = paired_stats(pairs)
    assert stats["ratio_median"] == pytest.approx(1.1)
    assert stats["ratio_q1"] == pytest.approx(1.1) and stats["ratio_q3"] == pytest.approx(1.1)
    assert stats["overhead_ms_median"] == pytest.approx(3.0)  # 0.001 * 3 s


def test_paired_stats_quartiles_and_single_pair():
    stats = paired_stats([(1.0, 1.0), (1.0, 2.0), (1.0, 3.0), (1.0, 4.0)])
    assert stats["ratio_median"] == 2.5
    assert stats["ratio_q1"] < 2.5 < stats["ratio_q3"]
    one = paired_stats([(0.02, 0.03)])
    assert one["ratio_median"] == one["ratio_q1"] == one["ratio_q3"] == pytest.approx(1.5)


def test_paired_stats_need_pairs():
    with pytest.raises(ValueError, match="no"):
        paired_stats([])


@pytest.mark.parametrize(("samples", "expected"), [
    ([5.0], 5.0), ([10.3, 5.6], 9.83), ([1.0, 2.0, 3.0], 2.8),
    ([float(i) for i in range(11)], 9.0),
])
def test_p90_interpolates_and_is_never_below_the_median(samples, expected):
    assert p90(samples) == pytest.approx(expected)
