"""Whole-body inference on the CPU: segnode's engine next to nnU-Net's stock predictor.

What is measured
----------------
A stitched NAKO-sized whole-body volume (320 x 260 x 316 voxels at 1.4 x 1.4 x
3.0 mm: a body-shaped ellipsoid with organ-like blobs and noise) and an
MRSegmentator-sized network: nnU-Net's PlainConvUNet with 6 stages of
32-320 features (31 M parameters), 41 output channels, patch 96 x 128 x 160,
spacing 3.0 x 1.5 x 1.5 mm (so 54 tiles per fold at tile step 0.5, 16 at
1.0), seeded random weights, written by this script as an nnU-Net model
folder with one fold. Each case runs in a fresh process:

- ``nnU-Net stock``: ``nnUNetPredictor`` loaded from the folder, fp32 (nnU-Net
  never autocasts on the CPU), its default preprocessing (skimage, cubic
  in-plane), ``predict_logits_from_preprocessed_data`` and
  ``convert_predicted_logits_to_segmentation_with_correct_shape`` (skimage,
  linear), each step timed as ``predict_single_npy_array`` calls them;
- ``segnode``: :class:`model.engine.SegmentationEngine` on the same folder with
  the node's CPU choices (``precision auto``: bf16 on a CPU with native bf16)
  and the network compiled (inductor freezing; the compile time is shown on
  its own row, paid once per fold and process);
- ``segnode eager``: the same without compiling, and ``segnode fp32`` (eager,
  fp32) to show what each step gives.

Per case: preprocessing, the network over all tiles of the fold (nnU-Net:
its sliding-window call; segnode: the sum of its forward passes), the export
(resampling of 41 channels to the input grid and the argmax; segnode's
streams interleaved with the window and is timed on its own), the whole call,
and the peak resident memory of the process (``ru_maxrss``), which includes
the ~1 GB of torch, the model and the 100 MB input. The labels of each
segnode case are compared with nnU-Net's (a random network has near-tied
logits, so this agreement is far below what trained weights give: the test
suite measures bf16 against fp32 on the trained demo model).

Usage (about 15 minutes on 2 cores at the default tile step 0.5):
``.venv/bin/python bench/inference.py [--tile-step S] [--cases ...] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._child import BenchError, run_json_child  # noqa: E402

WORK = REPO / ".bench" / "inference"
SHAPE_XYZ = (320, 260, 316)
SPACING_XYZ = (1.4, 1.4, 3.0)
PATCH = (96, 128, 160)
MODEL_SPACING = (3.0, 1.5, 1.5)
FEATURES = (32, 64, 128, 256, 320, 320)
CASES = ("nnU-Net stock", "segnode", "segnode eager", "segnode fp32")


def write_model(folder: Path) -> Path:
    """An MRSegmentator-sized nnU-Net v2 model folder with one fold of seeded random weights."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from model.architecture import plain_conv_unet_architecture
    from model.labels import MRSEGMENTATOR

    if (folder / "fold_0" / "checkpoint_final.pth").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    labels = {"background": 0, **{s.name: s.index for s in MRSEGMENTATOR}}
    resample = "resample_data_or_seg_to_shape"
    arch = plain_conv_unet_architecture(FEATURES)
    plans = {
        "dataset_name": "Dataset998_BenchWholeBody", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(MODEL_SPACING),
        "original_median_shape_after_transp": [316, 243, 299],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(PATCH),
            "median_image_size_in_voxels": [316, 243, 299], "spacing": list(MODEL_SPACING),
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": resample, "resampling_fn_seg": resample,
            "resampling_fn_probabilities": resample,
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                          "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                         "force_separate_z": None},
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": arch, "batch_dice": False}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 1000.0, "mean": 300.0, "median": 300.0, "min": 0.0,
            "percentile_00_5": 0.0, "percentile_99_5": 900.0, "std": 150.0}},
    }
    dataset = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 1,
               "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    (folder / "segnode.json").write_text(json.dumps({
        "name": "bench-wholebody", "version": "0", "input_orientation": "LPS",
        "description": "random weights, MRSegmentator-sized"}))
    torch.manual_seed(0)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                 arch["_kw_requires_import"], 1, len(labels),
                                 allow_init=True, deep_supervision=False)
    (folder / "fold_0").mkdir(exist_ok=True)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                              "dataset_json": dataset},
                "inference_allowed_mirroring_axes": None},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


def whole_body_volume():
    """The stitched whole-body image as a highdicom Volume (axial, LPS), float32."""
    import highdicom as hd

    cached = WORK / "wholebody.npy"
    if cached.exists():
        body = np.load(cached)
    else:
        body = _body_array()
        np.save(cached, body)
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).T  # k->H, j->P, i->L
    return hd.Volume.from_components(
        body, position=(-224.0, -182.0, -474.0), direction=direction,
        spacing=(SPACING_XYZ[2], SPACING_XYZ[1], SPACING_XYZ[0]), coordinate_system="PATIENT",
        frame_of_reference_uid="1.2.826.0.1.3680043.10.511.9")


def _body_array() -> np.ndarray:
    rng = np.random.default_rng(0)
    nz, ny, nx = SHAPE_XYZ[2], SHAPE_XYZ[1], SHAPE_XYZ[0]
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz, dtype=np.float32),
                          np.linspace(-1, 1, ny, dtype=np.float32),
                          np.linspace(-1, 1, nx, dtype=np.float32), indexing="ij")
    body = ((x / 0.8) ** 2 + (y / 0.6) ** 2 < 1.0).astype(np.float32) * 300.0
    for cz, cy, cx, r, v in rng.uniform([-0.8, -0.4, -0.5, 0.05, 100], [0.8, 0.4, 0.5, 0.2, 800],
                                        size=(40, 5)):
        body += v * (((z - cz) / (r * 2)) ** 2 + ((y - cy) / r) ** 2 + ((x - cx) / r) ** 2 < 1)
    body += rng.normal(0, 20, body.shape).astype(np.float32)
    return body.astype(np.float32)


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _nnunet_stock(folder: Path, tile_step: float, threads: int) -> tuple[dict, np.ndarray]:
    import torch
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from model._nnunet import volume_to_nnunet

    prepared = volume_to_nnunet(whole_body_volume(), "LPS")
    predictor = nnUNetPredictor(tile_step_size=tile_step, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    t0 = time.perf_counter()
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, props = preprocessor.run_case_npy(
        prepared.array, None, {"spacing": list(prepared.spacing)}, predictor.plans_manager,
        predictor.configuration_manager, predictor.dataset_json)
    t1 = time.perf_counter()
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    t2 = time.perf_counter()
    labels = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, predictor.plans_manager, predictor.configuration_manager,
        predictor.label_manager, props, return_probabilities=False, num_threads_torch=threads)
    t3 = time.perf_counter()
    return ({"preprocess_s": t1 - t0, "network_s": t2 - t1, "export_s": t3 - t2,
             "total_s": t3 - t0, "compile_s": 0.0, "precision": "fp32"}, np.asarray(labels))


def _segnode(folder: Path, tile_step: float, precision: str, compile_network: bool
             ) -> tuple[dict, np.ndarray]:
    from model._nnunet import volume_to_nnunet
    from model.engine import SegmentationEngine
    from model.packs import load_pack

    image = whole_body_volume()
    engine = SegmentationEngine(load_pack(folder), device="cpu", tile_step_size=tile_step,
                                precision=precision, compile_network=compile_network)
    started = time.perf_counter()
    engine.warm_up()
    compile_s = time.perf_counter() - started if compile_network else 0.0
    labels = engine.segment(image)
    timings = engine.last_timings
    info = engine.describe()
    prepared = volume_to_nnunet(image, "LPS")
    on_model_grid = prepared.source_grid.with_array(labels.array).match_geometry(
        prepared.model_grid).array  # back to nnU-Net's array order, to compare
    return ({"preprocess_s": timings["preprocess_s"], "network_s": timings["predict_s"],
             "export_s": timings["export_s"], "total_s": timings["total_s"],
             "compile_s": compile_s, "precision": info["precision"],
             "compiled": info["compiled"]}, on_model_grid)


def run_case(name: str, tile_step: float) -> dict:
    """Measure one case in this process; writes its labels next to the model."""
    import torch

    threads = max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)
    folder = WORK / "model"
    if name == "nnU-Net stock":
        figures, labels = _nnunet_stock(folder, tile_step, threads)
    else:
        precision = "fp32" if name == "segnode fp32" else "auto"
        figures, labels = _segnode(folder, tile_step, precision, compile_network=name == "segnode")
    np.save(WORK / f"labels-{name.replace(' ', '_')}.npy", labels.astype(np.uint8))
    figures["peak_gib"] = _peak_gib()
    figures["tile_step"] = tile_step
    (WORK / f"figures-{name.replace(' ', '_')}.json").write_text(json.dumps(figures))
    return figures


def _agreement(name: str) -> float | None:
    ref, other = (WORK / "labels-nnU-Net_stock.npy"), WORK / f"labels-{name.replace(' ', '_')}.npy"
    if not (ref.exists() and other.exists()):
        return None
    a, b = np.load(ref), np.load(other)
    return float(np.mean(a == b)) if a.shape == b.shape else None


def table(results: dict[str, dict], tile_step: float) -> list[dict]:
    """Rows: stage, segnode, nnU-Net, ratio (nnU-Net / segnode for times, segnode / nnU-Net
    for memory)."""
    peer = results.get("nnU-Net stock")
    rows = []
    for name in CASES[1:]:
        ours = results.get(name)
        if ours is None:
            continue
        for key, label in (("preprocess_s", "preprocessing s"), ("network_s", "network, 1 fold s"),
                           ("export_s", "export (resample + argmax) s"),
                           ("total_s", "whole call s"), ("peak_gib", "peak memory GiB"),
                           ("compile_s", "compile, once per fold s")):
            theirs = peer.get(key) if peer else None
            ratio = None
            if theirs and ours[key] and key != "compile_s":
                ratio = ours[key] / theirs
            rows.append({"case": name, "stage": label, "segnode": ours[key],
                         "nnunet": theirs, "segnode_over_nnunet": ratio})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-step", type=float, default=0.5,
                        help="sliding-window step for both (nnU-Net's default 0.5)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--reuse-peer", action="store_true",
                        help="take nnU-Net's figures from its last run at this tile step "
                             "(it does not change with segnode's code; about 11 minutes saved)")
    parser.add_argument("--run", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    WORK.mkdir(parents=True, exist_ok=True)
    if args.run:
        print(json.dumps(run_case(args.run, args.tile_step)))
        return 0
    write_model(WORK / "model")
    results, problems = {}, {}
    for name in args.cases:
        saved = WORK / f"figures-{name.replace(' ', '_')}.json"
        if name == CASES[0] and args.reuse_peer and saved.exists():
            figures = json.loads(saved.read_text())
            if figures.get("tile_step") == args.tile_step:
                print(f"reusing {name} from {saved}", flush=True)
                results[name] = figures
                continue
        print(f"running {name} ...", flush=True)
        try:
            results[name] = run_json_child(__file__, name, ("--tile-step", str(args.tile_step)))
        except BenchError as exc:
            problems[name] = str(exc)
            print(f"  failed: {exc}", flush=True)
    rows = table(results, args.tile_step)
    print(f"\nWhole-body {SHAPE_XYZ} voxels at {SPACING_XYZ} mm, 41-channel 6-stage "
          f"PlainConvUNet, patch {PATCH}, tile step {args.tile_step}, 1 fold, CPU")
    print(f"{'case':14s} {'stage':30s} {'segnode':>9s} {'nnU-Net':>9s} {'segnode/nnU-Net':>16s}")
    for row in rows:
        theirs = f"{row['nnunet']:9.2f}" if row["nnunet"] is not None else "        -"
        ratio = f"{row['segnode_over_nnunet']:15.2f}x" if row["segnode_over_nnunet"] else \
            "               -"
        print(f"{row['case']:14s} {row['stage']:30s} {row['segnode']:9.2f} {theirs} {ratio}")
    for name in CASES[1:]:
        if name in results:
            agreement = _agreement(name)
            text = f"{agreement:.4f}" if agreement is not None else "-"
            print(f"{name}: precision {results[name]['precision']}, labels equal to nnU-Net's "
                  f"on {text} of voxels (random weights: near-tied logits)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cases": results,
                                         "problems": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
