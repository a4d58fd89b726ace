"""Fixtures for the model tests: a tiny nnU-Net v2 model folder with random weights.

The folder has exactly the layout nnU-Net writes after training (plans.json,
dataset.json, fold_0/checkpoint_final.pth) and is loaded through the same
code path as a real pack (``load_pack`` -> ``SegmentationEngine``). The
network is built from the plans with nnunetv2's own ``get_network_from_plans``
and its seeded random ``state_dict`` is saved as ``network_weights``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from model.architecture import plain_conv_unet_architecture
from model.labels import MRSEGMENTATOR

TINY_PATCH = [16, 16, 16]
TINY_SPACING = [2.0, 2.0, 2.0]


def tiny_plans() -> dict:
    """plans.json of a 3-stage 3d_fullres PlainConvUNet (16^3 patch, 2 mm spacing)."""
    resample = "resample_data_or_seg_to_shape"
    return {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": TINY_SPACING,
        "original_median_shape_after_transp": [32, 32, 32],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": TINY_PATCH,
                "median_image_size_in_voxels": [32, 32, 32],
                "spacing": TINY_SPACING,
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": resample,
                "resampling_fn_seg": resample,
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                              "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                             "force_separate_z": None},
                "resampling_fn_probabilities": resample,
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1,
                                                       "order_z": 0, "force_separate_z": None},
                "architecture": plain_conv_unet_architecture([4, 8, 16], n_conv_per_stage=1),
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1000.0, "mean": 100.0, "median": 100.0, "min": 0.0,
                  "percentile_00_5": 0.0, "percentile_99_5": 900.0, "std": 50.0}
        },
    }


def mrsegmentator_style(plans: dict) -> dict:
    """Rewrite plans the way MRSegmentator's are: pre-2.3 format, ``3d_fullres_bs8``.

    The architecture goes back to the old ``UNet_class_name`` keys (nnunetv2
    converts them on load, with a warning) and a ``3d_fullres_bs8``
    configuration inherits from ``3d_fullres``.
    """
    config = plans["configurations"]["3d_fullres"]
    arch = config.pop("architecture")["arch_kwargs"]
    config.update({
        "UNet_class_name": "PlainConvUNet",
        "UNet_base_num_features": arch["features_per_stage"][0],
        "unet_max_num_features": arch["features_per_stage"][-1],
        "n_conv_per_stage_encoder": arch["n_conv_per_stage"],
        "n_conv_per_stage_decoder": arch["n_conv_per_stage_decoder"],
        "num_pool_per_axis": [2, 2, 2],
        "pool_op_kernel_sizes": arch["strides"],
        "conv_kernel_sizes": arch["kernel_sizes"],
    })
    plans["configurations"]["3d_fullres_bs8"] = {"inherits_from": "3d_fullres", "batch_size": 8}
    return plans


def write_tiny_model(folder: Path, *, labels: dict[str, int] | None = None, seed: int = 0,
                     folds: tuple[int, ...] = (0,), metadata: dict | None = None,
                     mrsegmentator_like: bool = False, trainer: str | None = None,
                     configuration: str | None = None, plans_name: str | None = None) -> Path:
    """Write a tiny nnU-Net v2 model folder with seeded random weights.

    Parameters
    ----------
    folder : Path
        Destination (created).
    labels : dict, optional
        dataset.json labels; default the 40 MRSegmentator labels plus background.
    seed : int
        torch seed of the random weights (fold f uses ``seed + f``).
    folds : tuple of int
        Folds to write.
    metadata : dict, optional
        Written as segnode.json when given.
    mrsegmentator_like : bool
        Old-format plans, configuration ``3d_fullres_bs8`` and trainer
        ``nnUNetTrainerNoMirroring`` without mirroring axes, as MRSegmentator ships.
    trainer, configuration, plans_name : str, optional
        Recorded in the checkpoints / plans instead of the defaults; a
        ``NoMirroring`` trainer stores no mirroring axes. The configuration
        (``3d_fullres`` or an inheriting one) is added to the plans if absent.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    folder.mkdir(parents=True, exist_ok=True)
    if labels is None:
        labels = {"background": 0, **{s.name: s.index for s in MRSEGMENTATOR}}
    plans = tiny_plans()
    dataset = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 1,
               "file_ending": ".nii.gz"}
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    default_configuration, default_trainer, mirror = "3d_fullres", "nnUNetTrainer", (0, 1, 2)
    if mrsegmentator_like:
        plans = mrsegmentator_style(plans)
        default_configuration, default_trainer, mirror = ("3d_fullres_bs8",
                                                          "nnUNetTrainerNoMirroring", None)
    if trainer is not None:
        mirror = None if "NoMirroring" in trainer else mirror
    trainer = trainer or default_trainer
    if configuration is not None and configuration not in plans["configurations"]:
        plans["configurations"][configuration] = {"inherits_from": "3d_fullres"}
    configuration = configuration or default_configuration
    if plans_name is not None:
        plans["plans_name"] = plans_name
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    for fold in folds:
        torch.manual_seed(seed + fold)
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                     arch["_kw_requires_import"], 1, len(labels),
                                     allow_init=True, deep_supervision=False)
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save({
            "network_weights": net.state_dict(),
            "trainer_name": trainer,
            "init_args": {"plans": plans, "configuration": configuration, "fold": fold,
                          "dataset_json": dataset},
            "inference_allowed_mirroring_axes": mirror,
        }, folder / f"fold_{fold}" / "checkpoint_final.pth")
    if metadata is not None:
        (folder / "segnode.json").write_text(json.dumps(metadata))
    return folder


def zip_folder(folder: Path, archive: Path, *, prefix: str = "") -> Path:
    """Zip ``folder``'s files under ``prefix`` inside the archive."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + str(path.relative_to(folder)))
    return archive


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MRSegmentator-labelled model with folds 0 and 1."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny_model", folds=(0, 1),
                            metadata={"name": "tiny", "version": "0.0.1",
                                      "description": "random weights",
                                      "input_orientation": "LPS"})


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    """A CPU engine over the tiny model, shared by the session (loaded once)."""
    from model.engine import SegmentationEngine
    from model.packs import load_pack

    return SegmentationEngine(load_pack(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def make_tiny_model():
    """The :func:`write_tiny_model` function, for tests that need their own folder."""
    return write_tiny_model


@pytest.fixture(scope="session")
def make_zip():
    """The :func:`zip_folder` function."""
    return zip_folder
