"""QC flags on synthetic label volumes."""

from __future__ import annotations

import highdicom as hd
import numpy as np

from model.qc import FOV_EDGE, FRAGMENTED, LATERALITY, check, touches_fov_edge

NAMES = {1: "liver", 2: "left_kidney", 3: "right_kidney", 4: "spleen"}


def _volume(array, x_step=1.0):
    """Affine with the column (i) axis along +x (patient left) or -x."""
    affine = np.eye(4)
    affine[:3, 0] = [0, 0, 2.5]
    affine[:3, 1] = [0, 1.0, 0]
    affine[:3, 2] = [x_step, 0, 0]
    return hd.Volume(array, affine, "PATIENT", "1.2.3")


def _kidneys(left_at_high_i=True):
    a = np.zeros((10, 20, 30), np.uint8)
    a[3:7, 5:15, 5:12] = 1                      # interior liver
    hi, lo = (2, 3) if left_at_high_i else (3, 2)
    a[4:6, 8:11, 20:24] = hi
    a[4:6, 8:11, 14:18] = lo
    return a


def test_box_cut_by_fov_edge_flagged():
    for box in (np.s_[0:2, 5:8, 5:8], np.s_[4:6, 0:3, 5:8], np.s_[4:6, 5:8, 27:30],
                np.s_[9:10, 5:8, 5:8]):
        a = np.zeros((10, 20, 30), np.uint8)
        a[4:6, 5:8, 12:15] = 1
        a[box] = 4
        assert touches_fov_edge(_volume(a)) == {4}
        flags = check(_volume(a), NAMES)
        assert [(f.label, f.code) for f in flags] == [(4, FOV_EDGE)]


def test_correct_sides_not_flagged():
    assert check(_volume(_kidneys(True)), NAMES) == []


def test_swapped_left_right_flagged():
    flags = check(_volume(_kidneys(False)), NAMES)
    assert {(f.label, f.code) for f in flags} == {(2, LATERALITY), (3, LATERALITY)}


def test_laterality_uses_affine_not_array_order():
    # i axis runs towards patient right: left kidney at low i is correct
    assert check(_volume(_kidneys(False), x_step=-1.0), NAMES) == []
    flags = check(_volume(_kidneys(True), x_step=-1.0), NAMES)
    assert {f.code for f in flags} == {LATERALITY}


def test_fragmented_structure_flagged():
    a = _kidneys(True)
    a[2:3, 15:17, 2:4] = 1  # a liver fragment: 4 of 284 voxels -> largest 98.6 %: fine
    assert check(_volume(a), NAMES) == []
    a[5:8, 16:19, 2:8] = 1  # 54 more voxels apart -> largest 280/338 = 83 %
    flags = check(_volume(a), NAMES)
    assert [(f.label, f.code) for f in flags] == [(1, FRAGMENTED)]
    assert "liver" in flags[0].message
