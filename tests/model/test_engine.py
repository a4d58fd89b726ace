"""The engine on a tiny random nnU-Net model (CPU): grids, orientation, devices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch

from model._nnunet import labels_from_nnunet, validate_orientation, volume_to_nnunet
from model.device import parse_device, resolve_device, worker_devices
from model.engine import SegmentationEngine
from model.packs import load_pack
from segnode_errors import ConfigError, InputRejected, ModelError

AXIAL = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).T  # k->H, j->P, i->L


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay),
                              np.cos(az), np.sin(az))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _volume(direction: np.ndarray, shape: tuple[int, int, int] = (12, 20, 24),
            spacing: tuple[float, float, float] = (3.0, 1.5, 1.5), seed: int = 0) -> hd.Volume:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = 400.0 * np.exp(-(zz**2 + (yy - 0.3) ** 2 + (xx + 0.2) ** 2) * 3.0)
    array = (blob + 50.0 * rng.random(shape)).astype(np.float32)
    return hd.Volume.from_components(
        array, position=(-20.0, 15.0, 7.5), direction=direction, spacing=spacing,
        coordinate_system="PATIENT", frame_of_reference_uid="1.2.826.0.1.3680043.10.511.1",
    )


def _assert_same_grid(labels: hd.Volume, image: hd.Volume) -> None:
    assert labels.spatial_shape == image.spatial_shape
    assert np.array_equal(labels.affine, image.affine)
    assert labels.frame_of_reference_uid == image.frame_of_reference_uid
    assert labels.array.dtype == np.uint8


def test_tiny_model_loads_and_describes(tiny_engine: SegmentationEngine) -> None:
    info = tiny_engine.describe()
    assert info["device"] == "cpu"
    assert info["folds"] == [0]  # CPU default: first fold only
    assert info["tile_step_size"] == 0.75
    assert info["model_name"] == "tiny" and info["model_version"] == "0.0.1"
    assert len(info["weights_sha256"]) == 64
    assert info["torch_version"] == torch.__version__
    assert info["network_class"].endswith("PlainConvUNet")
    assert info["resampling"] == "resample_torch_fornnunet"
    assert info["use_mirroring"] is True
    assert info["precision"] in ("fp32", "bf16") and info["compiled"] is False


@pytest.mark.parametrize("name,direction", [
    ("axial", AXIAL),
    ("reversed", AXIAL @ np.diag([-1.0, 1.0, -1.0])),
    ("oblique", _rotation(0.35, -0.2, 0.5) @ AXIAL[:, [2, 0, 1]]),
])
def test_labels_on_identical_grid(tiny_engine: SegmentationEngine, name: str,
                                  direction: np.ndarray) -> None:
    image = _volume(direction)
    labels = tiny_engine.segment(image)
    _assert_same_grid(labels, image)
    assert labels.array.max() <= tiny_engine.pack.labels.max_index
    assert set(tiny_engine.last_timings) >= {"preprocess_s", "predict_s", "export_s"}


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (0,)), ((2, 0, 1), (1, 2)), ((1, 2, 0), ())])
@pytest.mark.parametrize("oblique", [False, True])
def test_spatially_consistent_under_permutation_and_flip(
    tiny_engine: SegmentationEngine, perm: tuple[int, int, int], flips: tuple[int, ...],
    oblique: bool,
) -> None:
    """The same voxels on a permuted/flipped grid give the same labels at the same place."""
    direction = _rotation(0.3, 0.25, -0.4) @ AXIAL if oblique else AXIAL
    image = _volume(direction)
    other = image.flip_spatial(flips) if flips else image
    other = other.permute_spatial_axes(perm)
    labels = tiny_engine.segment(image)
    labels_other = tiny_engine.segment(other)
    _assert_same_grid(labels_other, other)
    expected = labels.flip_spatial(flips) if flips else labels
    expected = expected.permute_spatial_axes(perm)
    assert np.array_equal(expected.affine, labels_other.affine)
    assert np.array_equal(expected.array, labels_other.array)


def test_model_sees_its_input_orientation() -> None:
    """An axial DICOM-order volume reaches nnU-Net as [S, P, L] for an LPS model."""
    image = _volume(AXIAL @ np.diag([-1.0, -1.0, 1.0]))  # k->F, j->A, i->L
    prepared = volume_to_nnunet(image, "LPS")
    assert [d.value for d in prepared.model_grid.get_closest_patient_orientation()] == \
        ["H", "P", "L"]
    assert np.array_equal(prepared.array[0], image.array[::-1, ::-1, :])
    assert prepared.spacing == pytest.approx((3.0, 1.5, 1.5))
    las = volume_to_nnunet(image, "LAS")
    assert [d.value for d in las.model_grid.get_closest_patient_orientation()] == ["H", "A", "L"]
    back = labels_from_nnunet(prepared.array[0].astype(np.int16), prepared)
    assert np.array_equal(back.array, image.array.astype(np.int16))


def test_bad_orientation_and_input() -> None:
    with pytest.raises(ModelError, match="input_orientation"):
        validate_orientation("LPL")
    with pytest.raises(InputRejected, match="channels"):
        volume_to_nnunet(hd.Volume(np.zeros((2, 3, 4, 2)), np.eye(4), "PATIENT",
                                   channels={"OpticalPathIdentifier": ["1", "2"]}), "LPS")


def test_folds_and_tile_step_validation(tiny_model_dir: Path) -> None:
    pack = load_pack(tiny_model_dir)
    assert pack.folds == (0, 1)
    engine = SegmentationEngine(pack, device="cpu", folds=["0", 1], tile_step_size=1.0)
    assert engine.describe()["folds"] == [0, 1]
    assert engine.describe()["tile_step_size"] == 1.0
    labels = engine.segment(_volume(AXIAL, shape=(8, 12, 12)))
    assert labels.spatial_shape == (8, 12, 12)
    with pytest.raises(ModelError, match="available folds"):
        SegmentationEngine(pack, device="cpu", folds=[3])
    with pytest.raises(ModelError, match="tile_step_size"):
        SegmentationEngine(pack, device="cpu", tile_step_size=0.0)


@dataclass
class FakeCuda:
    """A CUDA probe for the device tests (the GPU is an edge: faked by injection)."""

    available: bool
    count: int = 0

    def is_available(self) -> bool:
        return self.available

    def device_count(self) -> int:
        return self.count


@pytest.mark.parametrize("spec,expected", [
    ("auto", ("auto", None)), ("CPU", ("cpu", None)), ("cuda", ("cuda", None)),
    ("cuda:1", ("cuda", 1)), ("gpu:0", ("cuda", 0)), (" gpu ", ("cuda", None)),
])
def test_parse_device(spec: str, expected: tuple[str, int | None]) -> None:
    assert parse_device(spec) == expected


@pytest.mark.parametrize("spec", ["", "tpu", "cuda:", "cuda:x", "cpu:1", "auto:0", "cuda:-1"])
def test_parse_device_rejects(spec: str) -> None:
    with pytest.raises(ConfigError, match="Invalid 'device' value"):
        parse_device(spec)


def test_resolve_device_with_fake_gpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="model.device"):
        assert resolve_device("auto", cuda=FakeCuda(True, 2)) == torch.device("cuda", 0)
    assert "cuda:0" in caplog.text
    assert resolve_device("auto", cuda=FakeCuda(False)) == torch.device("cpu")
    assert resolve_device("gpu:1", cuda=FakeCuda(True, 2)) == torch.device("cuda", 1)
    assert resolve_device("cpu", cuda=FakeCuda(True, 2)) == torch.device("cpu")
    with pytest.raises(ConfigError, match="only 2 CUDA"):
        resolve_device("cuda:2", cuda=FakeCuda(True, 2))
    with pytest.raises(ConfigError, match="not available"):
        resolve_device("cuda", cuda=FakeCuda(False))


def test_worker_devices_one_worker_per_gpu_or_per_entry() -> None:
    assert worker_devices("auto", cuda=FakeCuda(True, 3)) == ("cuda:0", "cuda:1", "cuda:2")
    assert worker_devices(("auto",), cuda=FakeCuda(True, 2)) == ("cuda:0", "cuda:1")
    assert worker_devices("auto", cuda=FakeCuda(False)) == ("cpu",)
    assert worker_devices("cuda", cuda=FakeCuda(True, 2)) == ("cuda:0",)  # one named device
    assert worker_devices(("cpu", "cpu"), cuda=FakeCuda(True, 2)) == ("cpu", "cpu")
    assert worker_devices(("gpu:1", "cuda:0"), cuda=FakeCuda(True, 2)) == ("cuda:1", "cuda:0")
    with pytest.raises(ConfigError, match="'cuda:2' - only 2 CUDA"):
        worker_devices(("cuda:0", "cuda:2"), cuda=FakeCuda(True, 2))


def test_engine_rejects_bad_device(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError):
        SegmentationEngine(load_pack(tiny_model_dir), device="cuda:7", cuda=FakeCuda(False))


def test_mrsegmentator_style_folder(tmp_path: Path, make_tiny_model) -> None:
    """Old-format plans, an inheriting configuration and a NoMirroring trainer load and run."""
    folder = make_tiny_model(tmp_path / "mrseg", folds=(0, 1, 2, 3, 4), mrsegmentator_like=True)
    pack = load_pack(folder)
    assert pack.folds == (0, 1, 2, 3, 4) and len(pack.labels) == 40
    with pytest.warns(UserWarning, match="old nnU-Net plans format"):
        engine = SegmentationEngine(pack, device="cpu", folds=(0, 4))
    info = engine.describe()
    assert info["configuration"] == "3d_fullres_bs8"
    assert info["trainer_name"] == "nnUNetTrainerNoMirroring"
    assert info["use_mirroring"] is False  # no mirroring axes in the checkpoint
    image = _volume(AXIAL, shape=(8, 12, 12))
    _assert_same_grid(engine.segment(image), image)


@pytest.mark.parametrize("spacing,force_separate_z", [((3.0, 1.5, 1.5), None),
                                                      ((3.3, 1.2, 1.7), None),
                                                      ((3.3, 1.2, 1.7), True)])
def test_same_labels_as_nnunets_own_predictor(tiny_model_dir: Path, spacing: tuple,
                                              force_separate_z: bool | None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The streaming sliding window and export give nnU-Net's own predictor's labels.

    Both load the folder their own way and use nnU-Net's torch resampling; the
    second and third cases resample the logits (trilinear, then nearest along z).
    nnU-Net sums the logits in fp16 (``torch.half``), segnode in fp32; with the
    near-tied logits of a random network that alone changes about 0.5 % of the
    labels, so nnU-Net is run with ``torch.half`` meaning fp32.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from model.engine import _use_torch_resampling

    engine = SegmentationEngine(load_pack(tiny_model_dir), device="cpu", folds=(0, 1),
                                tile_step_size=0.5, precision="fp32")
    image = _volume(AXIAL, shape=(20, 36, 30), spacing=spacing)
    predictor = nnUNetPredictor(tile_step_size=0.5, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(tiny_model_dir), use_folds=(0, 1))
    for cm in (predictor.configuration_manager, engine._runners[0].configuration):
        _use_torch_resampling(cm)
        cm.configuration["resampling_fn_probabilities"] = "resample_torch_fornnunet"
        cm.configuration["resampling_fn_probabilities_kwargs"] = {
            "is_seg": False, "force_separate_z": force_separate_z}
    ours = engine.segment(image)
    prepared = volume_to_nnunet(image, "LPS")
    monkeypatch.setattr(torch, "half", torch.float32)
    theirs = predictor.predict_single_npy_array(prepared.array, {"spacing": list(prepared.spacing)})
    monkeypatch.undo()
    theirs = labels_from_nnunet(theirs.astype(np.uint8), prepared).array
    assert len(np.unique(theirs)) > 3
    agreement = float(np.mean(ours.array == theirs))
    assert agreement >= 0.9995, agreement  # measured: 0.99991 (2 of 21600 voxels)


def test_round_trip_exact_for_many_grids() -> None:
    """Labels map back exactly for random rotations, flips, and the 45-degree tie."""
    rng = np.random.default_rng(7)
    s = 1.0 / np.sqrt(2.0)
    directions = [np.array([[s, s, 0.0], [s, -s, 0.0], [0.0, 0.0, 1.0]]).T]
    directions += [_rotation(*rng.uniform(-np.pi, np.pi, 3)) for _ in range(20)]
    for direction in directions:
        image = _volume(direction, shape=(3, 4, 5))
        for orientation in ("LPS", "LAS", "RAS"):
            prepared = volume_to_nnunet(image, orientation)
            values = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
            on_source = image.get_geometry().with_array(values)
            reordered = on_source.to_patient_orientation(orientation[::-1]).array
            if not np.array_equal(np.sort(prepared.array.ravel()), np.sort(image.array.ravel())):
                raise AssertionError("voxel values changed")
            back = labels_from_nnunet(reordered, prepared)
            assert np.array_equal(back.affine, image.affine)
            assert np.array_equal(back.array, values)


def test_gpu_defaults_recorded_with_fake_gpu(tiny_model_dir: Path) -> None:
    """Construction only (no CUDA here): what a GPU engine would run with."""
    engine = SegmentationEngine(load_pack(tiny_model_dir), device="auto",
                                cuda=FakeCuda(True, 1))
    info = engine.describe()
    assert info["device"] == "cuda:0"
    assert info["folds"] == [0, 1]  # all folds on GPU
    assert info["tile_step_size"] == 0.5
    assert info["precision"] == "fp16"  # the fake GPU has no is_bf16_supported


@pytest.mark.slow
@pytest.mark.parametrize("orientation,reverse", [("coronal", False), ("oblique", True)])
def test_demo_model_dice_on_phantom(orientation: str, reverse: bool) -> None:
    """The built-in demo pack, run by the engine on grids unlike its training data.

    A wrong orientation hand-off or a left/right swap would collapse the Dice
    of the lateral organs; the phantom's truth uses MRSegmentator indices, the
    model its own, so structures are compared by name.
    """
    from model.packs import DEMO_PACK_DIR, is_nnunet_folder
    from model.phantom import Phantom, make_grid
    from model.store import ModelStore

    if not is_nnunet_folder(DEMO_PACK_DIR):
        pytest.skip("model/demo_model not built yet")
    pack = ModelStore(Path("/nonexistent-models")).resolve(None)
    engine = SegmentationEngine(pack, device="cpu")
    rng = np.random.default_rng(3)
    grid = make_grid(orientation, (4.0, 4.0, 4.0), rng=rng, reversed_slices=reverse,
                     max_oblique_deg=12.0)
    image, truth = Phantom(11).sample(grid, modality="MR", rng=rng)
    labels = engine.segment(image)
    _assert_same_grid(labels, image)
    names = Phantom().label_names
    dice = {}
    for structure in pack.labels:
        mrseg = next(k for k, v in names.items() if v == structure.name)
        a, b = truth.array == mrseg, labels.array == structure.index
        if a.sum():
            dice[structure.name] = 2.0 * (a & b).sum() / (a.sum() + b.sum())
    for organ in ("liver", "spleen", "right_kidney", "left_kidney"):
        assert dice[organ] > 0.6, dice


def test_compiled_folds_give_the_eager_labels(tiny_model_dir: Path) -> None:
    """One compiled (frozen) module per fold: fold 1 must not run with fold 0's weights.

    Each fold is compiled once, at warm-up: a tile the sliding window passes
    that differs from the warm-up tile in a guarded property (strides, being an
    inference tensor) would compile a second, unfrozen graph, 1.5x slower.
    """
    from torch._dynamo.utils import counters

    counters.clear()
    pack = load_pack(tiny_model_dir)
    eager = SegmentationEngine(pack, device="cpu", folds=(0, 1), precision="fp32")
    compiled = SegmentationEngine(pack, device="cpu", folds=(0, 1), precision="fp32",
                                  compile_network=True)
    compiled.warm_up()
    assert compiled.describe()["compiled"] is True
    only_first = SegmentationEngine(pack, device="cpu", folds=(0,), precision="fp32")
    image = _volume(AXIAL)
    expected = eager.segment(image).array
    got = compiled.segment(image).array
    assert np.mean(got == expected) >= 0.9995
    assert counters["stats"]["unique_graphs"] == 2  # one per fold, none added by segment()
    assert np.mean(only_first.segment(image).array == expected) < 0.99


@pytest.mark.slow
def test_bf16_agrees_with_fp32_on_the_demo_model() -> None:
    """The trained demo network: bf16 autocast changes at most 0.2 % of the foreground labels.

    One patch of the abdomen at the model's 4 mm, without mirroring, as bf16 runs slowly
    on a CPU (15 s for this patch, fp32 2 s). A crop has more boundary per volume than a
    body, where the labels that flip lie: 0.09 % flipped here.
    """
    from model.packs import DEMO_PACK_DIR, is_nnunet_folder
    from model.phantom import Phantom, make_grid
    from model.store import ModelStore

    if not is_nnunet_folder(DEMO_PACK_DIR):
        pytest.skip("model/demo_model not built yet")
    pack = ModelStore(Path("/nonexistent-models")).resolve(None)
    rng = np.random.default_rng(3)
    grid = make_grid("axial", (4.0, 4.0, 4.0), fov_mm=(192.0, 256.0, 256.0), rng=rng)
    image, _ = Phantom(11).sample(grid, rng=rng)
    fp32, bf16 = (SegmentationEngine(pack, device="cpu", precision=precision,
                                     use_mirroring=False, tile_step_size=1.0)
                  .segment(image).array
                  for precision in ("fp32", "bf16"))
    foreground = (fp32 > 0) | (bf16 > 0)
    assert foreground.sum() > 10000
    assert np.mean(fp32[foreground] == bf16[foreground]) >= 0.998
