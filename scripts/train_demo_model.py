"""Train segnode's embedded demo model on synthetic phantoms (CPU, minutes).

THE DEMO MODEL IS NOT A CLINICAL MODEL. It has only ever seen the analytic
phantom of :mod:`model.phantom` (ellipsoid organs, MR-like and CT-like
intensities) and segments nothing else meaningfully. It exists so that the
node runs end to end without any installed model pack.

Reproduce the committed model (from the repository root)::

    .venv/bin/python scripts/train_demo_model.py --out model/demo_model \
        --cases 64 --iterations 2000 --seed 0

The result is a standard nnU-Net v2 trained-model folder that
``nnUNetPredictor.initialize_from_trained_model_folder`` loads::

    model/demo_model/plans.json
    model/demo_model/dataset.json
    model/demo_model/fold_0/checkpoint_final.pth   (fp32 weights only)
    model/demo_model/segnode.json                  (name, version, figures)

Training cases are jittered phantoms on axial grids (half of them oblique, up
to 25 degrees)
with random spacing (3-6 mm), half MR-like and half CT-like, reoriented the
way segnode's engine presents volumes to nnU-Net (``input_orientation`` LPS:
nnU-Net array axes (S, P, L), i.e. SimpleITK's (z, y, x) of an image with
identity direction). They are preprocessed with nnU-Net's own
``DefaultPreprocessor.run_case_npy`` and the plans written here, so
normalisation (z-score) and resampling (4 mm isotropic) match inference
exactly. The network is a 4-stage PlainConvUNet built from the plans and
trained with a plain torch loop (Dice + cross-entropy, Adam, random crops,
intensity augmentation, no mirroring: laterality matters). Fields of view vary
widely because z-score normalisation depends on the share of air in the image.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.architecture import plain_conv_unet_architecture  # noqa: E402
from model.phantom import Phantom, make_grid  # noqa: E402

__all__ = ["build_dataset_json", "build_plans", "main"]

logger = logging.getLogger("train_demo_model")

VERSION = "1.3.0"
TARGET_SPACING = [4.0, 4.0, 4.0]
PATCH_SIZE = [48, 64, 64]
FEATURES = [8, 16, 32, 64]
#: nnU-Net array orientation of the training cases (highdicom naming:
#: axis 0 towards superior, axis 1 posterior, axis 2 left).
ARRAY_ORIENTATION = "SPL"


def _label_map() -> tuple[dict[str, int], np.ndarray]:
    """Return dataset.json labels (consecutive) and a lookup MRSeg index -> consecutive."""
    names = Phantom().label_names
    labels = {"background": 0}
    lut = np.zeros(256, dtype=np.uint8)
    for n, (mrseg, name) in enumerate(sorted(names.items()), start=1):
        labels[name] = n
        lut[mrseg] = n
    return labels, lut


def build_dataset_json(num_training: int) -> dict:
    """Return the nnU-Net dataset.json content (MRSegmentator names, labels 0..N-1)."""
    labels, _ = _label_map()
    return {
        "channel_names": {"0": "MR_or_CT"},
        "labels": labels,
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "name": "segnode_demo_phantom",
        "description": "segnode demo model trained on synthetic phantoms. NOT a clinical model.",
        "reference": "segnode model/phantom.py",
        "licence": "Apache-2.0",
    }


def build_plans() -> dict:
    """Return the nnU-Net v2 plans for the demo model (one 3d_fullres configuration)."""
    arch = plain_conv_unet_architecture(FEATURES, n_conv_per_stage=2)
    torch_resampling = "resample_torch_fornnunet"
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": PATCH_SIZE,
        "median_image_size_in_voxels": [135, 75, 100],
        "spacing": TARGET_SPACING,
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": torch_resampling,
        "resampling_fn_seg": torch_resampling,
        "resampling_fn_data_kwargs": {"is_seg": False, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "force_separate_z": None},
        "resampling_fn_probabilities": torch_resampling,
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "force_separate_z": None},
        "architecture": arch,
        "batch_dice": True,
    }
    return {
        "dataset_name": "Dataset999_SegnodeDemoPhantom",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [4.5, 4.5, 4.5],
        "original_median_shape_after_transp": [120, 67, 89],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config},
        "experiment_planner_used": "segnode scripts/train_demo_model.py",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1500.0, "mean": 400.0, "median": 400.0, "min": 0.0,
                  "percentile_00_5": 20.0, "percentile_99_5": 1000.0, "std": 200.0}
        },
    }


def _managers(plans: dict):
    """Return nnU-Net's PlansManager and the 3d_fullres ConfigurationManager."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    return pm, pm.get_configuration("3d_fullres")


def phantom_case(seed: int, *, modality: str | None = None, spacing=None):
    """Return (image array, MRSeg label array, spacing) of one random phantom.

    Arrays are in nnU-Net order (S, P, L); spacing in mm in the same order.
    """
    rng = np.random.default_rng(10_000 + seed)
    ph = Phantom(seed, jitter=1.0)
    modality = modality or ("MR" if rng.uniform() < 0.5 else "CT")
    if spacing is None:
        inplane = rng.uniform(3.0, 6.0)
        spacing = (rng.uniform(3.0, 6.0), inplane, inplane)
    orientation = "oblique" if rng.uniform() < 0.5 else "axial"
    # varied fields of view: the share of air moves nnU-Net's z-score normalisation
    fov = (rng.uniform(300.0, 620.0), rng.uniform(280.0, 520.0), rng.uniform(380.0, 560.0))
    centre = tuple(rng.uniform(-25.0, 25.0, size=3)) if fov[0] > 500 else (
        rng.uniform(-20, 20), rng.uniform(-20, 20), rng.uniform(-150.0, 150.0))
    grid = make_grid(orientation, spacing, rng=rng, fov_mm=fov, center_mm=centre,
                     max_oblique_deg=25.0, reversed_slices=bool(rng.uniform() < 0.5))
    image, labels = ph.sample(grid, modality=modality, rng=rng)
    image = image.to_patient_orientation(ARRAY_ORIENTATION)
    labels = labels.to_patient_orientation(ARRAY_ORIENTATION)
    return image.array, labels.array, tuple(float(s) for s in image.spacing)


def _preprocess_case(args: tuple[int, dict]) -> tuple[np.ndarray, np.ndarray]:
    """Generate and preprocess one training case exactly as nnU-Net's predictor does."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    seed, plans = args
    torch.set_num_threads(1)
    pm, cm = _managers(plans)
    dataset_json = build_dataset_json(1)
    image, labels, spacing = phantom_case(seed)
    _, lut = _label_map()
    seg = lut[labels][None].astype(np.int16)
    data, seg, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        image[None].astype(np.float32), seg, {"spacing": list(spacing)}, pm, cm, dataset_json)
    return data.astype(np.float32), np.clip(seg, 0, None).astype(np.int64)


def _random_crop(data: np.ndarray, seg: np.ndarray, rng: np.random.Generator,
                 foreground: bool) -> tuple[np.ndarray, np.ndarray]:
    """Crop (padding where needed) a patch, optionally centred on a labelled voxel."""
    shape = np.array(data.shape[1:])
    patch = np.array(PATCH_SIZE)
    pad = np.maximum(patch - shape, 0)
    if pad.any():
        widths = [(0, 0)] + [(int(p // 2), int(p - p // 2)) for p in pad]
        data = np.pad(data, widths, mode="constant", constant_values=float(data.min()))
        seg = np.pad(seg, widths, mode="constant")
        shape = np.array(data.shape[1:])
    if foreground:
        fg = np.argwhere(seg[0] > 0)
        label = rng.choice(np.unique(seg[0][seg[0] > 0]))
        fg = np.argwhere(seg[0] == label) if len(fg) else fg
        centre = fg[rng.integers(len(fg))] if len(fg) else shape // 2
        start = np.clip(centre - patch // 2, 0, shape - patch)
    else:
        start = np.array([rng.integers(0, s - p + 1) for s, p in zip(shape, patch, strict=True)])
    sl = tuple(slice(int(a), int(a + p)) for a, p in zip(start, patch, strict=True))
    return data[(slice(None),) + sl], seg[(slice(None),) + sl]


def _batch(cases, rng: np.random.Generator, batch_size: int):
    """Draw a training batch with intensity augmentation; returns torch tensors."""
    xs, ys = [], []
    for b in range(batch_size):
        data, seg = cases[rng.integers(len(cases))]
        x, y = _random_crop(data, seg, rng, foreground=b % 2 == 1 or rng.uniform() < 0.33)
        # the z-scores of a tissue move by about x2 and +-0.6 between tight and wide FOVs
        x = x * math.exp(rng.uniform(math.log(0.6), math.log(1.8))) + rng.uniform(-0.6, 0.6)
        if rng.uniform() < 0.3:
            x = x + rng.normal(0.0, rng.uniform(0.0, 0.15), size=x.shape)
        xs.append(x.astype(np.float32))
        ys.append(y[0])
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus batch soft Dice over the foreground classes."""
    ce = torch.nn.functional.cross_entropy(logits, target)
    probs = torch.softmax(logits, 1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + (1.0 - dice[1:].mean())


def build_network(plans: dict, num_classes: int) -> torch.nn.Module:
    """Build the network from the plans, as nnU-Net's predictor will."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = plans["configurations"]["3d_fullres"]["architecture"]
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                  arch["_kw_requires_import"], 1, num_classes,
                                  allow_init=True, deep_supervision=False)


def train(cases, plans: dict, *, iterations: int, max_minutes: float,
          seed: int) -> tuple[torch.nn.Module, dict]:
    """Train for ``iterations`` (or until ``max_minutes``); return the network and figures."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    num_classes = len(build_dataset_json(0)["labels"])
    net = build_network(plans, num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-5)
    budget, start, it, losses = max_minutes * 60.0, time.monotonic(), 0, []
    net.train()
    while it < iterations and (elapsed := time.monotonic() - start) < budget:
        progress = max(it / iterations, elapsed / budget)
        for group in opt.param_groups:
            group["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) + 3e-5
        x, y = _batch(cases, rng, plans["configurations"]["3d_fullres"]["batch_size"])
        loss = _loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        losses.append(float(loss.detach()))
        it += 1
        if it % 25 == 0:
            print(f"iter {it:5d}  {elapsed / 60:5.1f} min  loss {np.mean(losses[-25:]):.4f}",
                  flush=True)
    figures = {"iterations": it, "training_minutes": round((time.monotonic() - start) / 60, 2),
               "final_loss": round(float(np.mean(losses[-50:])), 4)}
    return net.eval(), figures


def save_model_folder(out: Path, net: torch.nn.Module, plans: dict, dataset_json: dict,
                      figures: dict) -> Path:
    """Write plans.json, dataset.json, fold_0/checkpoint_final.pth and segnode.json."""
    (out / "fold_0").mkdir(parents=True, exist_ok=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=2) + "\n")
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    # no copies: the decoder's view of the encoder shares storage, saved once
    weights = {k: v.detach().to(torch.float32).cpu() for k, v in net.state_dict().items()}
    checkpoint = {
        "network_weights": weights,
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": figures.get("iterations", 0),
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                      "dataset_json": dataset_json, "device": "cpu"},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": None,
    }
    path = out / "fold_0" / "checkpoint_final.pth"
    torch.save(checkpoint, path)
    meta = {
        "name": "demo",
        "version": VERSION,
        "description": ("segnode demo model, trained only on synthetic ellipsoid phantoms "
                        "(scripts/train_demo_model.py). NOT a clinical model: do not use "
                        "its output for any diagnostic or clinical purpose."),
        "input_orientation": "LPS",
        "input_array_axes": ARRAY_ORIENTATION,
        "label_names": "MRSegmentator",
        "modalities": ["MR", "CT"],
        "training": figures,
    }
    (out / "segnode.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def predict_labels(folder: Path, image: np.ndarray, spacing) -> np.ndarray:
    """Predict with nnU-Net's own predictor (array in (S, P, L) order)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    return predictor.predict_single_npy_array(image[None].astype(np.float32),
                                              {"spacing": list(spacing)}, None, None, False)


def evaluate(folder: Path, seed: int, modality: str, spacing) -> dict[str, float]:
    """Return Dice per structure name on a held-out phantom."""
    image, labels, sp = phantom_case(seed, modality=modality, spacing=spacing)
    pred = predict_labels(folder, image, sp)
    labels_json, lut = _label_map()
    truth = lut[labels]
    dice = {}
    for name, n in labels_json.items():
        if n == 0:
            continue
        a, b = truth == n, pred == n
        if a.sum() == 0 and b.sum() == 0:
            continue
        dice[name] = round(float(2 * (a & b).sum() / (a.sum() + b.sum())), 4)
    return dice


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("model/demo_model"))
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--max-minutes", type=float, default=40.0,
                        help="stop early after this much wall-clock training time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    plans = build_plans()
    t0 = time.monotonic()
    with Pool(2) as pool:
        jobs = [(args.seed * 1000 + i, plans) for i in range(args.cases)]
        cases = pool.map(_preprocess_case, jobs)
    print(f"prepared {len(cases)} cases in {time.monotonic() - t0:.0f} s", flush=True)
    net, figures = train(cases, plans, iterations=args.iterations,
                         max_minutes=args.max_minutes, seed=args.seed)
    figures.update({"cases": args.cases, "seed": args.seed, "target_spacing_mm": TARGET_SPACING,
                    "patch_size": PATCH_SIZE, "features_per_stage": FEATURES,
                    "cpu_threads": torch.get_num_threads()})
    path = save_model_folder(args.out, net, plans, build_dataset_json(args.cases), figures)
    figures["checkpoint_bytes"] = path.stat().st_size
    held_out = {}
    for modality, spacing in (("MR", (5.0, 3.5, 3.5)), ("CT", (3.0, 4.5, 4.5))):
        held_out[modality] = evaluate(args.out, 99_999, modality, spacing)
        print(modality, json.dumps(held_out[modality]), flush=True)
    figures["held_out_dice"] = held_out
    save_model_folder(args.out, net, plans, build_dataset_json(args.cases), figures)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
