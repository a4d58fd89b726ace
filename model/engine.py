"""The segmentation engine: one nnU-Net v2 model pack, loaded once per process.

A pack may hold several nnU-Net models (TotalSegmentator's organ and muscle
parts); each is built as follows and their labels are merged in order.
The network is built exactly as nnU-Net builds it, but without nnU-Net's
trainer-class lookup (which imports every trainer module and fails on some
installs, see ``shared/reference/nnunet_notes.md``): the class named in
``plans.json`` is instantiated with ``get_network_from_plans``, each fold's
``network_weights`` are loaded from its checkpoint, and both go to
``nnUNetPredictor.manual_initialization`` together with the mirroring axes
stored in the checkpoint. Preprocessing (cropping, the plans' normalisation,
resampling to the plans' spacing), sliding-window prediction over the chosen
folds and the export back to the input shape are nnU-Net's own code, called
in-process in the order ``predict_single_npy_array`` calls them; the steps
are called one by one only to time them and to pass the thread count to the
export (``predict_single_npy_array`` sets it to ``nnUNet_def_n_proc``, 8 by
default, whatever the machine has).

Defaults, recorded by :meth:`SegmentationEngine.describe`; a pack's own
recommended folds and tile step for the device type (``segnode.json``
``settings``, from its descriptor) come before the first two rows:

========================  ===================  =====================
setting                   CPU                  CUDA
========================  ===================  =====================
folds                     first available      all available
tile_step_size            0.75                 0.5 (nnU-Net default)
perform_everything_on_    False                True (``gpu_fast_path``)
device
autocast                  off                  nnU-Net's (fp16)
export resampling         torch if the plans use nnU-Net's default
                          (skimage, order 1 / order_z 0), else the plans'
export on GPU             no                   yes with torch resampling
                                               and ``gpu_fast_path``
                                               (CPU on OOM)
========================  ===================  =====================
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Literal

import highdicom as hd
import numpy as np
import torch

from segnode_errors import ModelError

from ._nnunet import NnunetInput, labels_from_nnunet, volume_to_nnunet
from .device import CudaProbe, resolve_device
from .packs import Fold, InferenceDefaults, ModelPack, NnunetModel

__all__ = ["SegmentationEngine"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

ExportResampling = Literal["torch", "plans"]
_DEFAULT_RESAMPLING = "resample_data_or_seg_to_shape"


@contextlib.contextmanager
def _nnunet_stdout() -> Any:
    """Route nnU-Net's ``print`` output to the debug log instead of stdout."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        if line.strip():
            logger.debug("nnU-Net: %s", line)


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _read_json(path: os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


class _ModelRunner:
    """One nnU-Net model of a pack, loaded for inference (see the module docstring)."""

    def __init__(self, pack: ModelPack, model: NnunetModel, folds: tuple[Fold, ...], *,
                 device: torch.device, tile_step: float, on_device: bool, threads: int,
                 use_mirroring: bool, export_resampling: ExportResampling) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.model, self.folds, self._threads = model, folds, threads
        self._where = f"model '{pack.name}'" + (f" part '{model.id}'" if len(pack.models) > 1
                                                 else "")
        params, meta = self._load_checkpoints()
        self.meta = meta
        dataset_json = _read_json(model.folder / "dataset.json")
        with _nnunet_stdout():
            plans_manager = PlansManager(_read_json(model.folder / "plans.json"))
            try:
                cm = plans_manager.get_configuration(meta["configuration"])
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"plans.json of {self._where}: {exc}") from exc
            if cm.previous_stage_name is not None:
                raise ModelError(
                    f"Cascade configuration '{meta['configuration']}' is not supported.")
            self.export_resampling = _choose_export_resampling(cm, export_resampling)
            self.export_cm_gpu = _gpu_export_configuration(cm, device) if on_device else None
            network = _build_network(plans_manager, cm, dataset_json, params[0])
            predictor = nnUNetPredictor(
                tile_step_size=tile_step, use_gaussian=True, use_mirroring=use_mirroring,
                perform_everything_on_device=on_device, device=device,
                verbose=False, verbose_preprocessing=False, allow_tqdm=False,
            )
            predictor.manual_initialization(
                network, plans_manager, cm, params, dataset_json, meta["trainer_name"],
                meta["mirror_axes"],
            )
        self.predictor = predictor
        self.mirroring = bool(use_mirroring and meta["mirror_axes"])
        self.network_class = cm.network_arch_class_name
        lookup = np.arange(max(dict(model.label_map) or {0: 0}) + 1, dtype=np.int32)
        for value, pack_value in model.label_map:
            lookup[value] = pack_value
        self._lookup = lookup if model.label_map else None
        self.timings: dict[str, float] = {}

    def _load_checkpoints(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        params, first = [], None
        for fold in self.folds:
            path = self.model.checkpoint(fold)
            try:
                # nnU-Net checkpoints hold non-tensor objects; the weights are
                # verified by SHA-256 at install time.
                checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint
                raise ModelError(f"Could not read checkpoint '{path}': {exc}") from exc
            if first is None:
                first = checkpoint
            elif checkpoint["init_args"]["configuration"] != first["init_args"]["configuration"]:
                raise ModelError(f"Folds of {self._where} use different configurations.")
            params.append(checkpoint["network_weights"])
        assert first is not None
        meta = {
            "configuration": first["init_args"]["configuration"],
            "trainer_name": first.get("trainer_name", "nnUNetTrainer"),
            "mirror_axes": first.get("inference_allowed_mirroring_axes"),
        }
        for key, declared in (("trainer_name", self.model.trainer),
                              ("configuration", self.model.configuration)):
            if declared is not None and meta[key] != declared:
                raise ModelError(f"Checkpoints of {self._where} were made with {key} "
                                 f"'{meta[key]}', but the pack declares '{declared}'.")
        return params, meta

    def predict(self, prepared: NnunetInput) -> np.ndarray:
        """Labels on the model grid ``(z, y, x)``, in the pack's label values."""
        p = self.predictor
        t0 = time.perf_counter()
        preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
        data, _, props = preprocessor.run_case_npy(
            prepared.array, None, {"spacing": list(prepared.spacing)}, p.plans_manager,
            p.configuration_manager, p.dataset_json,
        )
        t1 = time.perf_counter()
        with _nnunet_stdout():
            logits = p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
        t2 = time.perf_counter()
        labels = np.asarray(self._export(logits, props, on_device=p.device.type == "cuda"))
        del logits
        t3 = time.perf_counter()
        self.timings = {"preprocess_s": t1 - t0, "predict_s": t2 - t1, "export_s": t3 - t2}
        return labels if self._lookup is None else self._lookup[labels]

    def predict_on_cpu(self, prepared: NnunetInput) -> np.ndarray:
        """:meth:`predict` with the network moved to the CPU for this one call."""
        p = self.predictor
        device, on_device = p.device, p.perform_everything_on_device
        p.device, p.perform_everything_on_device = torch.device("cpu"), False
        try:
            return self.predict(prepared)
        finally:
            p.device, p.perform_everything_on_device = device, on_device

    def _export(self, logits: torch.Tensor, props: dict[str, Any], *, on_device: bool) -> Any:
        """nnU-Net's export: resample logits to the input shape, argmax, undo the crop.

        With torch resampling on CUDA the resampling runs on the GPU; if that
        runs out of memory it is redone on the CPU.
        """
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        p = self.predictor
        cm = self.export_cm_gpu if on_device and self.export_cm_gpu is not None else \
            p.configuration_manager
        try:
            return convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, p.plans_manager, cm, p.label_manager, props,
                return_probabilities=False, num_threads_torch=self._threads,
            )
        except torch.cuda.OutOfMemoryError:
            if cm is p.configuration_manager:
                raise
            logger.warning("CUDA out of memory while resampling; resampling on the CPU.")
            torch.cuda.empty_cache()
            return convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, p.plans_manager, p.configuration_manager, p.label_manager, props,
                return_probabilities=False, num_threads_torch=self._threads,
            )

    def describe(self) -> dict[str, Any]:
        """What this model runs with."""
        return {
            "id": self.model.id,
            "configuration": self.meta["configuration"],
            "trainer_name": self.meta["trainer_name"],
            "network_class": self.network_class,
            "folds": list(self.folds),
            "use_mirroring": self.mirroring,
            "export_resampling": self.export_resampling,
            "export_on_device": self.export_cm_gpu is not None,
        }


def _build_network(plans_manager: Any, cm: Any, dataset_json: dict[str, Any],
                   weights: dict[str, Any]) -> torch.nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    channels = determine_num_input_channels(plans_manager, cm, dataset_json)
    if channels != 1:
        raise ModelError(f"Model expects {channels} input channels; segnode provides 1.")
    heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    try:
        network = get_network_from_plans(
            cm.network_arch_class_name, cm.network_arch_init_kwargs,
            cm.network_arch_init_kwargs_req_import, channels, heads,
            allow_init=False, deep_supervision=False,
        )
        network.load_state_dict(weights)
    except (ImportError, RuntimeError, TypeError, KeyError) as exc:
        raise ModelError(f"Could not build the network named in plans.json: {exc}") from exc
    return network.eval()


def _gpu_export_configuration(cm: Any, device: torch.device) -> Any:
    """A copy of ``cm`` whose torch export resampling runs on the CUDA device, or None."""
    if cm.configuration["resampling_fn_probabilities"] != "resample_torch_fornnunet":
        return None
    config = copy.deepcopy(cm.configuration)
    config["resampling_fn_probabilities_kwargs"]["device"] = device
    return type(cm)(config)


def _choose_export_resampling(cm: Any, choice: ExportResampling) -> str:
    config = cm.configuration
    kwargs = config.get("resampling_fn_probabilities_kwargs", {})
    if (choice == "torch" and config.get("resampling_fn_probabilities") == _DEFAULT_RESAMPLING
            and kwargs.get("order", 1) == 1 and kwargs.get("order_z", 0) == 0):
        config["resampling_fn_probabilities"] = "resample_torch_fornnunet"
        config["resampling_fn_probabilities_kwargs"] = {
            "is_seg": False, "force_separate_z": kwargs.get("force_separate_z"),
            "memefficient_seg_resampling": False,
        }
    return str(config["resampling_fn_probabilities"])


class SegmentationEngine:
    """Run one model pack on volumes; create once per process and reuse.

    A pack of several nnU-Net models runs each on the same reoriented image
    and merges their labels in the pack's order: a later model's structure
    overwrites an earlier one's where both found something (as
    TotalSegmentator merges its parts).

    Parameters
    ----------
    pack : ModelPack
        The model to run.
    device : str, optional
        ``auto`` (CUDA if torch sees it, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    folds : sequence of int or str, optional
        Folds to ensemble, for every model of the pack. Default: the pack's
        recommendation for the device type (``segnode.json`` ``settings``),
        else the first available fold on CPU and all on CUDA.
    tile_step_size : float, optional
        Sliding-window step as a fraction of the patch size, in (0, 1].
        Default: the pack's recommendation, else 0.75 on CPU and 0.5 on CUDA.
    use_mirroring : bool, optional
        Test-time mirroring over the axes the checkpoint allows (no effect for
        checkpoints trained without mirroring, such as MRSegmentator's).
    gpu_fast_path : bool, optional
        On CUDA keep the sliding-window logits on the GPU
        (``perform_everything_on_device``) and fall back to the CPU, with a
        warning, when the GPU runs out of memory.
    export_resampling : {"torch", "plans"}, optional
        ``"torch"`` uses nnU-Net's torch resampling for the export when the
        plans name nnU-Net's default (skimage) resampling; ``"plans"`` always
        uses the function named in the plans.
    num_threads : int, optional
        torch CPU threads, set process-wide (``torch.set_num_threads``) and
        passed to nnU-Net's export. Default: the CPUs this process may use.
    cuda : CudaProbe, optional
        CUDA availability probe (``torch.cuda``); injected by tests.

    Raises
    ------
    ConfigError
        If ``device`` is invalid or unavailable.
    ModelError
        If the folds, the tile step or a model folder are invalid.
    """

    def __init__(
        self,
        pack: ModelPack,
        *,
        device: str = "auto",
        folds: Sequence[Fold] | None = None,
        tile_step_size: float | None = None,
        use_mirroring: bool = True,
        gpu_fast_path: bool = True,
        export_resampling: ExportResampling = "torch",
        num_threads: int | None = None,
        cuda: CudaProbe | None = None,
    ) -> None:
        self._pack = pack
        self._device = resolve_device(device, cuda=cuda)
        on_cuda = self._device.type == "cuda"
        recommended = pack.defaults.get(self._device.type, InferenceDefaults())
        self._tile_step = self._validate_tile_step(
            tile_step_size if tile_step_size is not None else recommended.tile_step_size,
            on_cuda)
        self._on_device = bool(gpu_fast_path and on_cuda)
        self._threads = int(num_threads or _available_cpus())
        torch.set_num_threads(self._threads)  # process-wide; preprocessing and export run on CPU
        self.last_timings: dict[str, float] = {}
        started = time.perf_counter()
        self._runners = [
            _ModelRunner(pack, model, self._choose_folds(model, folds, recommended.folds,
                                                         on_cuda),
                         device=self._device, tile_step=self._tile_step,
                         on_device=self._on_device, threads=self._threads,
                         use_mirroring=use_mirroring, export_resampling=export_resampling)
            for model in pack.models
        ]
        self._load_s = time.perf_counter() - started
        logger.info(
            "Loaded model '%s' %s (%d model(s), folds %s) on %s in %.2f s.", pack.name,
            pack.version, len(self._runners), list(self.folds), self._device, self._load_s,
        )

    # -- construction -------------------------------------------------------

    def _choose_folds(self, model: NnunetModel, folds: Sequence[Fold] | None,
                      recommended: Sequence[Fold] | None, on_cuda: bool) -> tuple[Fold, ...]:
        available = model.folds
        where = self._pack.name if len(self._pack.models) == 1 else \
            f"{self._pack.name}' part '{model.id}"
        if folds is None and recommended is not None:
            chosen = tuple(f for f in recommended if f in available)
            if not chosen:
                logger.warning("Model '%s' has none of its recommended folds %s; using %s.",
                               where, list(recommended), available[0])
            return chosen or (available[0],)
        if folds is None:
            return tuple(available) if on_cuda else (available[0],)
        chosen_list: list[Fold] = []
        for fold in folds:
            value: Fold = fold if fold == "all" else int(fold)
            if value not in available:
                raise ModelError(
                    f"Invalid fold '{fold}' for model '{where}' - available folds are "
                    f"{list(available)}."
                )
            chosen_list.append(value)
        if not chosen_list:
            raise ModelError("Argument 'folds' must name at least one fold.")
        return tuple(chosen_list)

    @staticmethod
    def _validate_tile_step(value: float | None, on_cuda: bool) -> float:
        if value is None:
            return 0.5 if on_cuda else 0.75
        if not 0.0 < float(value) <= 1.0:
            raise ModelError(f"Invalid 'tile_step_size' value '{value}' - expected 0 < step <= 1.")
        return float(value)

    # -- inference ----------------------------------------------------------

    def segment(self, image: hd.Volume) -> hd.Volume:
        """Segment one volume.

        Parameters
        ----------
        image : highdicom.Volume
            Scalar image, ``array[k, j, i]`` (slice, row, column), affine to LPS mm.

        Returns
        -------
        highdicom.Volume
            Integer label values (uint8, or uint16 for > 254 labels) indexed
            ``(k, j, i)`` on exactly the input grid (same affine, shape and
            frame of reference); 0 is background, other values index
            ``pack.labels``.

        Raises
        ------
        InputRejected
            If the volume has channels or is not in patient coordinates.
        ModelError
            If inference fails.
        """
        prepared = volume_to_nnunet(image, self._pack.input_orientation)
        dtype = np.uint8 if self._pack.labels.max_index < 255 else np.uint16
        started = time.perf_counter()
        merged: np.ndarray | None = None
        timings: dict[str, float] = {}
        for runner in self._runners:
            labels = self._run(runner, prepared).astype(dtype, copy=False)
            if merged is None:
                merged = labels
            else:
                np.copyto(merged, labels, where=labels != 0)
            prefix = "" if len(self._runners) == 1 else f"{runner.model.id}."
            timings.update({prefix + k: v for k, v in runner.timings.items()})
        assert merged is not None
        timings["total_s"] = time.perf_counter() - started
        self.last_timings = timings
        return labels_from_nnunet(merged, prepared)

    def _run(self, runner: _ModelRunner, prepared: NnunetInput) -> np.ndarray:
        try:
            return runner.predict(prepared)
        except torch.cuda.OutOfMemoryError as exc:
            if self._device.type != "cuda":
                raise ModelError(f"Out of memory during inference: {exc}") from exc
            logger.warning("CUDA out of memory on %s; running this case on the CPU.", self._device)
            return runner.predict_on_cpu(prepared)
        finally:
            if self._device.type == "cuda":
                torch.cuda.empty_cache()

    # -- reporting ----------------------------------------------------------

    @property
    def pack(self) -> ModelPack:
        """ModelPack: the model this engine runs."""
        return self._pack

    @property
    def device(self) -> torch.device:
        """torch.device: where the network runs."""
        return self._device

    @property
    def folds(self) -> tuple[Fold, ...]:
        """tuple: the folds ensembled (of the first model, for a multi-model pack)."""
        return self._runners[0].folds

    def describe(self) -> dict[str, Any]:
        """What this engine runs and how, for run reports (JSON-serialisable)."""
        import nnunetv2

        first = self._runners[0].describe()
        return {
            "model_name": self._pack.name,
            "model_version": self._pack.version,
            "weights_sha256": self._pack.weights_sha256,
            "input_orientation": self._pack.input_orientation,
            "configuration": first["configuration"],
            "trainer_name": first["trainer_name"],
            "network_class": first["network_class"],
            "models": [runner.describe() for runner in self._runners],
            "device": str(self._device),
            "folds": first["folds"],
            "tile_step_size": self._tile_step,
            "use_mirroring": any(r.mirroring for r in self._runners),
            "perform_everything_on_device": self._on_device,
            "autocast": "fp16 (nnU-Net, CUDA only)" if self._device.type == "cuda" else None,
            "export_resampling": first["export_resampling"],
            "export_on_device": first["export_on_device"],
            "num_threads": self._threads,
            "torch_version": torch.__version__,
            "nnunetv2_version": getattr(nnunetv2, "__version__", _dist_version("nnunetv2")),
            "load_s": round(self._load_s, 3),
        }


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"

