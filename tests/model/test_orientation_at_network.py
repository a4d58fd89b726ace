"""The array the network receives has the orientation the pack declares.

For each orientation the published packs use (MRSegmentator LPS, TotalSegmentator
RAS, MRAnnotator LAS) a tiny pack declaring it segments an oblique and a
coronal phantom whose intensity is a ramp along the patient axes. A forward
hook on the network records its first input; it must equal the image
reoriented by SimpleITK's own ``DICOMOrient`` (an implementation independent
of segnode's), z-scored as the plans say. The phantom fills exactly one
16^3 patch at the plans' 2 mm, so the network sees the whole image.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from model.engine import SegmentationEngine
from model.packs import load_pack
from model.phantom import make_grid
from tests.model.conftest import TINY_PATCH, TINY_SPACING, write_tiny_model

PACK_ORIENTATIONS = {"mrsegmentator-like": "LPS", "totalsegmentator-like": "RAS",
                     "mrannotator-like": "LAS"}


def _ramp_phantom(orientation: str) -> hd.Volume:
    """A 16^3 volume at 2 mm whose value grows differently along L, P and S."""
    rng = np.random.default_rng(3)
    grid = make_grid(orientation, tuple(TINY_SPACING), fov_mm=tuple(
        n * s for n, s in zip(TINY_PATCH, TINY_SPACING, strict=True)), rng=rng)
    points = grid.voxel_centres().reshape(*grid.shape, 3)
    values = 500.0 + 1.0 * points[..., 0] + 3.0 * points[..., 1] + 9.0 * points[..., 2]
    return grid.volume(values.astype(np.float32))


def _expected_network_input(image: hd.Volume, orientation: str) -> np.ndarray:
    oriented = sitk.DICOMOrient(image.to_simpleitk(), orientation)
    array = sitk.GetArrayFromImage(oriented).astype(np.float64)  # [z, y, x]
    return ((array - array.mean()) / max(array.std(), 1e-8)).astype(np.float32)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SegmentationEngine]:
    root = tmp_path_factory.mktemp("orientation-packs")
    return {name: SegmentationEngine(load_pack(write_tiny_model(
        root / name, metadata={"name": name, "input_orientation": code})), device="cpu",
        tile_step_size=1.0) for name, code in PACK_ORIENTATIONS.items()}


@pytest.mark.parametrize("grid", ["oblique", "coronal"])
@pytest.mark.parametrize("pack", sorted(PACK_ORIENTATIONS))
def test_network_input_has_the_packs_orientation(engines, pack: str, grid: str) -> None:
    engine = engines[pack]
    image = _ramp_phantom(grid)
    seen: list[torch.Tensor] = []
    # the first fold's network; observed, not replaced
    network = engine._runners[0].predictor.networks[0]
    handle = network.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].detach().clone()) if not seen else None)
    try:
        labels = engine.segment(image)
    finally:
        handle.remove()
    assert labels.spatial_shape == image.spatial_shape
    received = seen[0].cpu().numpy()[0, 0]
    expected = _expected_network_input(image, PACK_ORIENTATIONS[pack])
    assert received.shape == expected.shape
    np.testing.assert_allclose(received, expected, atol=1e-4)
    for other in set(PACK_ORIENTATIONS.values()) - {PACK_ORIENTATIONS[pack]}:
        assert not np.allclose(received, _expected_network_input(image, other), atol=1e-2)

