"""The segmentation engine: one nnU-Net v2 model pack, loaded once per process.

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

Defaults, recorded by :meth:`SegmentationEngine.describe`:

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
from .packs import Fold, ModelPack

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


class SegmentationEngine:
    """Run one model pack on volumes; create once per process and reuse.

    Parameters
    ----------
    pack : ModelPack
        The model to run.
    device : str, optional
        ``auto`` (CUDA if torch sees it, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    folds : sequence of int or str, optional
        Folds to ensemble. Default: the first available fold on CPU, all on CUDA.
    tile_step_size : float, optional
        Sliding-window step as a fraction of the patch size, in (0, 1].
        Default 0.75 on CPU, 0.5 on CUDA.
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
        If the folds, the tile step or the model folder are invalid.
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
        self._folds = self._validate_folds(folds, all_folds=on_cuda)
        self._tile_step = self._validate_tile_step(tile_step_size, on_cuda)
        self._on_device = bool(gpu_fast_path and on_cuda)
        self._threads = int(num_threads or _available_cpus())
        torch.set_num_threads(self._threads)  # process-wide; preprocessing and export run on CPU
        self.last_timings: dict[str, float] = {}
        started = time.perf_counter()
        self._build(use_mirroring, export_resampling)
        self._load_s = time.perf_counter() - started
        logger.info(
            "Loaded model '%s' %s (folds %s) on %s in %.2f s.", pack.name, pack.version,
            list(self._folds), self._device, self._load_s,
        )

    # -- construction -------------------------------------------------------

    def _validate_folds(self, folds: Sequence[Fold] | None, *, all_folds: bool) -> tuple[Fold, ...]:
        available = self._pack.folds
        if folds is None:
            return tuple(available) if all_folds else (available[0],)
        chosen: list[Fold] = []
        for fold in folds:
            value: Fold = fold if fold == "all" else int(fold)
            if value not in available:
                raise ModelError(
                    f"Invalid fold '{fold}' for model '{self._pack.name}' - available folds are "
                    f"{list(available)}."
                )
            chosen.append(value)
        if not chosen:
            raise ModelError("Argument 'folds' must name at least one fold.")
        return tuple(chosen)

    @staticmethod
    def _validate_tile_step(value: float | None, on_cuda: bool) -> float:
        if value is None:
            return 0.5 if on_cuda else 0.75
        if not 0.0 < float(value) <= 1.0:
            raise ModelError(f"Invalid 'tile_step_size' value '{value}' - expected 0 < step <= 1.")
        return float(value)

    def _load_checkpoints(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        params, first = [], None
        for fold in self._folds:
            path = self._pack.checkpoint(fold)
            try:
                # nnU-Net checkpoints hold non-tensor objects; the weights are
                # verified by SHA-256 at install time.
                checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint
                raise ModelError(f"Could not read checkpoint '{path}': {exc}") from exc
            if first is None:
                first = checkpoint
            elif checkpoint["init_args"]["configuration"] != first["init_args"]["configuration"]:
                raise ModelError(f"Folds of '{self._pack.name}' use different configurations.")
            params.append(checkpoint["network_weights"])
        assert first is not None
        meta = {
            "configuration": first["init_args"]["configuration"],
            "trainer_name": first.get("trainer_name", "nnUNetTrainer"),
            "mirror_axes": first.get("inference_allowed_mirroring_axes"),
        }
        return params, meta

    def _build(self, use_mirroring: bool, export_resampling: ExportResampling) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        params, meta = self._load_checkpoints()
        self._meta = meta
        dataset_json = _read_json(self._pack.folder / "dataset.json")
        with _nnunet_stdout():
            plans_manager = PlansManager(_read_json(self._pack.folder / "plans.json"))
            try:
                cm = plans_manager.get_configuration(meta["configuration"])
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"plans.json of '{self._pack.name}': {exc}") from exc
            if cm.previous_stage_name is not None:
                raise ModelError(
                    f"Cascade configuration '{meta['configuration']}' is not supported.")
            self._export_resampling = self._choose_export_resampling(cm, export_resampling)
            self._export_cm_gpu = self._gpu_export_configuration(cm)
            network = self._build_network(plans_manager, cm, dataset_json, params[0])
            predictor = nnUNetPredictor(
                tile_step_size=self._tile_step, use_gaussian=True, use_mirroring=use_mirroring,
                perform_everything_on_device=self._on_device, device=self._device,
                verbose=False, verbose_preprocessing=False, allow_tqdm=False,
            )
            predictor.manual_initialization(
                network, plans_manager, cm, params, dataset_json, meta["trainer_name"],
                meta["mirror_axes"],
            )
        self._predictor = predictor
        self._mirroring = bool(use_mirroring and meta["mirror_axes"])
        self._network_class = cm.network_arch_class_name

    @staticmethod
    def _build_network(plans_manager: Any, cm: Any, dataset_json: dict[str, Any],
                       weights: dict[str, Any]) -> torch.nn.Module:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunetv2.utilities.label_handling.label_handling import (
            determine_num_input_channels,
        )

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

    def _gpu_export_configuration(self, cm: Any) -> Any:
        """A copy of ``cm`` whose torch export resampling runs on the CUDA device, or None."""
        if not (self._on_device and cm.configuration["resampling_fn_probabilities"]
                == "resample_torch_fornnunet"):
            return None
        config = copy.deepcopy(cm.configuration)
        config["resampling_fn_probabilities_kwargs"]["device"] = self._device
        return type(cm)(config)

    @staticmethod
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
        started = time.perf_counter()
        try:
            labels = self._predict(prepared)
        except torch.cuda.OutOfMemoryError as exc:
            if self._device.type != "cuda":
                raise ModelError(f"Out of memory during inference: {exc}") from exc
            logger.warning("CUDA out of memory on %s; running this case on the CPU.", self._device)
            labels = self._predict_on_cpu(prepared)
        finally:
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
        self.last_timings["total_s"] = time.perf_counter() - started
        dtype = np.uint8 if self._pack.labels.max_index < 255 else np.uint16
        return labels_from_nnunet(labels.astype(dtype, copy=False), prepared)

    def _predict(self, prepared: NnunetInput) -> np.ndarray:
        p = self._predictor
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
        labels = self._export(logits, props, on_device=p.device.type == "cuda")
        del logits
        t3 = time.perf_counter()
        self.last_timings = {"preprocess_s": t1 - t0, "predict_s": t2 - t1, "export_s": t3 - t2}
        return np.asarray(labels)

    def _export(self, logits: torch.Tensor, props: dict[str, Any], *, on_device: bool) -> Any:
        """nnU-Net's export: resample logits to the input shape, argmax, undo the crop.

        With torch resampling on CUDA the resampling runs on the GPU; if that
        runs out of memory it is redone on the CPU.
        """
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        p = self._predictor
        cm = self._export_cm_gpu if on_device and self._export_cm_gpu is not None else \
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

    def _predict_on_cpu(self, prepared: NnunetInput) -> np.ndarray:
        p = self._predictor
        p.device, p.perform_everything_on_device = torch.device("cpu"), False
        try:
            return self._predict(prepared)
        finally:
            p.device, p.perform_everything_on_device = self._device, self._on_device

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
        """tuple: the folds ensembled."""
        return self._folds

    def describe(self) -> dict[str, Any]:
        """What this engine runs and how, for run reports (JSON-serialisable)."""
        import nnunetv2

        return {
            "model_name": self._pack.name,
            "model_version": self._pack.version,
            "weights_sha256": self._pack.weights_sha256,
            "input_orientation": self._pack.input_orientation,
            "configuration": self._meta["configuration"],
            "trainer_name": self._meta["trainer_name"],
            "network_class": self._network_class,
            "device": str(self._device),
            "folds": list(self._folds),
            "tile_step_size": self._tile_step,
            "use_mirroring": self._mirroring,
            "perform_everything_on_device": self._on_device,
            "autocast": "fp16 (nnU-Net, CUDA only)" if self._device.type == "cuda" else None,
            "export_resampling": self._export_resampling,
            "export_on_device": self._export_cm_gpu is not None,
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

