"""segnode's inference preprocessing gives nnU-Net's run_case_npy image and properties."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from model.engine import _use_torch_resampling
from model.packs import load_pack
from model.preprocess import preprocess_image


@pytest.mark.parametrize("mask_for_norm", [False, True])
@pytest.mark.parametrize("torch_resampling", [False, True])
def test_same_image_and_properties_as_run_case_npy(tiny_model_dir: Path, mask_for_norm: bool,
                                                   torch_resampling: bool) -> None:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pack = load_pack(tiny_model_dir)
    folder = pack.models[0].folder
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["use_mask_for_norm"] = [mask_for_norm]
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    if torch_resampling:
        _use_torch_resampling(cm)
    rng = np.random.default_rng(0)
    array = np.zeros((1, 23, 30, 27), dtype=np.float32)
    array[0, 3:20, 4:28, 2:25] = rng.normal(300, 80, (17, 24, 23))  # zero border: a real crop
    array[0, 10:13, 12:16, 9:12] = 0  # a hole inside the body
    spacing = (3.3, 1.2, 1.7)
    original = array.copy()
    ours, props = preprocess_image(array, spacing, pm, cm)
    assert np.array_equal(array, original)  # the input is not modified
    theirs, _, their_props = DefaultPreprocessor(verbose=False).run_case_npy(
        array, None, {"spacing": list(spacing)}, pm, copy.deepcopy(cm), {"labels": {
            "background": 0, "a": 1}, "channel_names": {"0": "MRI"}})
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    for key in ("shape_before_cropping", "bbox_used_for_cropping",
                "shape_after_cropping_and_before_resampling"):
        assert np.asarray(props[key]).tolist() == np.asarray(their_props[key]).tolist(), key
    assert props["bbox_used_for_cropping"] == [[3, 20], [4, 28], [2, 25]]
