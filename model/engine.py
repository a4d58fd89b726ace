"""The segmentation engine: one nnU-Net v2 model pack, loaded once per process.

A pack may hold several nnU-Net models (TotalSegmentator's organ and muscle
parts); each is built as follows and their labels are merged in order.
The network is built exactly as nnU-Net builds it, but without nnU-Net's
trainer-class lookup (which imports every trainer module and fails on some
installs, see ``shared/reference/nnunet_notes.md``): the class named in
``plans.json`` is instantiated with ``get_network_from_plans`` once per fold
and each copy gets its fold's ``network_weights`` (one module per fold, so a
compiled module may freeze its weights). Preprocessing (cropping, the plans'
normalisation, resampling to the plans' spacing) is nnU-Net's, without the
segmentation work inference discards (:mod:`model.preprocess`);
the sliding window, the fold ensemble, the resampling back to the input grid
and the argmax run in :mod:`model.sliding_window`, on the engine's device,
streaming along the head-foot axis so that only the uint8 labels come back.

Defaults, recorded by :meth:`SegmentationEngine.describe`; a pack's own
recommended folds and tile step for the device type (``segnode.json``
``settings``, from its descriptor) come before the first two rows:

========================  ===================  =====================
setting                   CPU                  CUDA
========================  ===================  =====================
folds                     first available      all available
tile_step_size            0.75                 0.5 (nnU-Net default)
precision (``auto``)      bf16 where the CPU   bf16 where supported,
                          has native bf16      else fp16
                          (avx512_bf16, AMX),
                          else fp32
compile                   off (``processing.compile`` / ``--compile``)
image and logit           torch (linear) when the plans name nnU-Net's
resampling                default skimage resampling
========================  ===================  =====================

The autocast dtype applies to the network's forward pass only; logits are
accumulated, resampled and compared in fp32. ``bench/inference.py`` measures
the argmax agreement of bf16 with fp32.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
import torch

from segnode_errors import ModelError

from ._nnunet import NnunetInput, labels_from_nnunet, volume_to_nnunet
from .device import CudaProbe, resolve_device, resolve_precision
from .packs import Fold, InferenceDefaults, ModelPack, NnunetModel
from .preprocess import preprocess_image
from .sliding_window import AxisMode, Precision, StreamingPredictor, working_bytes

__all__ = ["SegmentationEngine"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_DEFAULT_RESAMPLING = "resample_data_or_seg_to_shape"
_TORCH_RESAMPLING = "resample_torch_fornnunet"


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
                 device: torch.device, tile_step: float, use_mirroring: bool,
                 precision: Precision, compile_network: bool) -> None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.model, self.folds = model, folds
        self._where = f"model '{pack.name}'" + (f" part '{model.id}'" if len(pack.models) > 1
                                                 else "")
        params, meta = self._load_checkpoints()
        self.meta = meta
        self.dataset_json = _read_json(model.folder / "dataset.json")
        with _nnunet_stdout():
            self.plans_manager = PlansManager(_read_json(model.folder / "plans.json"))
            try:
                cm = self.plans_manager.get_configuration(meta["configuration"])
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"plans.json of {self._where}: {exc}") from exc
        if cm.previous_stage_name is not None:
            raise ModelError(f"Cascade configuration '{meta['configuration']}' is not supported.")
        label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        if label_manager.has_regions:
            raise ModelError(f"{self._where} is trained on regions; segnode runs label models.")
        self.resampling = _use_torch_resampling(cm)
        self.configuration = cm
        self.heads = label_manager.num_segmentation_heads
        self.device = device
        networks = [_build_network(self.plans_manager, cm, self.dataset_json, weights)
                    for weights in params]
        self.mirroring = bool(use_mirroring and meta["mirror_axes"])
        self.network_class = cm.network_arch_class_name
        self.predictor = StreamingPredictor(
            networks, tuple(cm.patch_size), self.heads, device, tile_step,
            mirror_axes=meta["mirror_axes"] if self.mirroring else None, precision=precision)
        self._compile = compile_network
        self.compiled = False
        self.tile_bytes = 0
        self._warm = False
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

    def warm_up(self) -> None:
        """Put the fold networks on the device, compile them if asked, measure one tile (CUDA)."""
        if self._warm:
            return
        p = self.predictor
        p.networks = [network.to(self.device) for network in p.networks]
        if self._compile:
            self.compiled = _compile_networks(p, self._where)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            with torch.inference_mode():
                p.predict_tile(torch.zeros((1, 1, *p.patch_size), device=self.device))
            self.tile_bytes = torch.cuda.max_memory_allocated(self.device) - before
        self._warm = True

    def working_bytes(self, prepared: NnunetInput) -> int:
        """Device bytes of the logit window and export buffers for this image (an estimate).

        The image is assumed to keep its in-plane size through preprocessing
        (resampling changes it by the ratio of spacings, which is included).
        """
        cm = self.configuration
        shape = prepared.array.shape[1:]
        model_plane = [max(int(round(n * s / t)), p) for n, s, t, p in
                       zip(shape[1:], prepared.spacing[1:], cm.spacing[-2:], cm.patch_size[1:],
                           strict=True)]
        return working_bytes(self.heads, self.configuration.patch_size, model_plane, shape[1:])

    def predict(self, prepared: NnunetInput, results_device: torch.device | None = None
                ) -> np.ndarray:
        """Labels on the model grid ``(z, y, x)``, in the pack's label values."""
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        pm, cm = self.plans_manager, self.configuration
        t0 = time.perf_counter()
        with _nnunet_stdout():
            if cm.preprocessor_name == "DefaultPreprocessor":
                data, props = preprocess_image(prepared.array, prepared.spacing, pm, cm)
            else:  # a model's own preprocessor: run as nnU-Net runs it
                data, _, props = cm.preprocessor_class(verbose=False).run_case_npy(
                    prepared.array, None, {"spacing": list(prepared.spacing)}, pm, cm,
                    self.dataset_json)
        t1 = time.perf_counter()
        export_shape = props["shape_after_cropping_and_before_resampling"]
        modes = _export_modes(cm, [props["spacing"][i] for i in pm.transpose_forward])
        label_dtype = np.uint8 if self.heads <= 256 else np.uint16
        self.predictor.results_device = results_device
        cropped = self.predictor.predict(torch.from_numpy(data), export_shape, modes,
                                         label_dtype)
        labels = np.zeros(props["shape_before_cropping"], dtype=label_dtype)
        labels = insert_crop_into_image(labels, cropped, props["bbox_used_for_cropping"])
        labels = np.ascontiguousarray(labels.transpose(pm.transpose_backward))
        streamed = self.predictor.timings
        self.timings = {"preprocess_s": t1 - t0, "predict_s": streamed["network_s"],
                        "export_s": streamed["export_s"]}
        return labels if self._lookup is None else self._lookup[labels]

    def describe(self) -> dict[str, Any]:
        """What this model runs with."""
        return {
            "id": self.model.id,
            "configuration": self.meta["configuration"],
            "trainer_name": self.meta["trainer_name"],
            "network_class": self.network_class,
            "folds": list(self.folds),
            "use_mirroring": self.mirroring,
            "resampling": self.resampling,
            "compiled": self.compiled,
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


def _compile_networks(predictor: StreamingPredictor, where: str) -> bool:
    """Compile each fold's network with inductor freezing and warm it up on one patch.

    Freezing folds the weights into the compiled graph, which is why every
    fold has its own module. Compilation needs a C++ compiler; when it fails
    the eager modules stay and a warning says why.
    """
    import torch._inductor.config as inductor_config

    started = time.perf_counter()
    eager = list(predictor.networks)
    with torch.inference_mode():  # an inference tensor, like every tile: no recompilation
        tile = torch.zeros((1, 1, *predictor.patch_size), device=predictor.device)
    try:
        with inductor_config.patch(freezing=True):
            predictor.networks = [torch.compile(network) for network in eager]
            predictor.predict_tile(tile)
    except Exception as exc:  # noqa: BLE001 - inductor raises many kinds; eager still works
        logger.warning("Could not compile the network of %s (%s: %s); running it eagerly.",
                       where, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        predictor.networks = eager
        return False
    logger.info("Compiled %d fold(s) of %s in %.1f s.", len(eager), where,
                time.perf_counter() - started)
    return True


def _use_torch_resampling(cm: Any) -> str:
    """Swap nnU-Net's default skimage resampling for its torch resampling; return the name.

    The plans' image resampling (cubic in-plane by default) becomes linear;
    the logits are always resampled linearly by the streaming export.
    """
    config = cm.configuration
    if config.get("resampling_fn_data") == _DEFAULT_RESAMPLING:
        kwargs = config.get("resampling_fn_data_kwargs", {})
        config["resampling_fn_data"] = _TORCH_RESAMPLING
        config["resampling_fn_data_kwargs"] = {
            "is_seg": False, "force_separate_z": kwargs.get("force_separate_z"),
            "memefficient_seg_resampling": False,
        }
    probabilities = config.get("resampling_fn_probabilities")
    if probabilities not in (_DEFAULT_RESAMPLING, _TORCH_RESAMPLING):
        logger.warning("plans.json names '%s' for the logits; segnode resamples them linearly.",
                       probabilities)
    return _TORCH_RESAMPLING


def _export_modes(cm: Any, original_spacing: Sequence[float]) -> tuple[AxisMode, AxisMode,
                                                                        AxisMode]:
    """Interpolation per axis of the logits' way back, as ``resample_torch_fornnunet`` does."""
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    kwargs = cm.configuration.get("resampling_fn_probabilities_kwargs", {})
    separate, axis = determine_do_sep_z_and_axis(
        kwargs.get("force_separate_z"), cm.spacing, original_spacing,
        kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD))
    axes = set(axis if isinstance(axis, (tuple, list)) else (axis,)) if separate else set()
    modes = tuple("nearest" if i in axes else "linear" for i in range(3))
    return modes  # type: ignore[return-value]


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
    precision : {"auto", "fp32", "bf16", "fp16"}, optional
        Autocast dtype of the network's forward pass (see the module
        docstring for ``auto``); accumulation and export stay fp32.
    compile_network : bool, optional
        Compile each fold's network with inductor freezing and warm it up
        on one patch at load time (tens of seconds per fold on a CPU, paid
        once per process); falls back to eager, with a warning, if it fails.
    num_threads : int, optional
        torch CPU threads, set process-wide (``torch.set_num_threads``).
        Default: the CPUs this process may use.
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
        precision: str = "auto",
        compile_network: bool = False,
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
        self._precision = resolve_precision(precision, self._device, cuda=cuda)
        self._threads = int(num_threads or _available_cpus())
        torch.set_num_threads(self._threads)  # process-wide
        self.last_timings: dict[str, float] = {}
        started = time.perf_counter()
        self._runners = [
            _ModelRunner(pack, model, self._choose_folds(model, folds, recommended.folds,
                                                         on_cuda),
                         device=self._device, tile_step=self._tile_step,
                         use_mirroring=use_mirroring, precision=self._precision,
                         compile_network=compile_network)
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
            with self._current_device():
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

    def warm_up(self) -> None:
        """Move the networks to the device and compile them if asked (else done on first use)."""
        for runner in self._runners:
            with self._current_device():
                runner.warm_up()

    def _current_device(self) -> contextlib.AbstractContextManager[Any]:
        """Make this engine's GPU the calling thread's current one (a node has one per worker)."""
        if self._device.type == "cuda":
            return torch.cuda.device(self._device)
        return contextlib.nullcontext()

    def _results_device(self, runner: _ModelRunner, prepared: NnunetInput) -> torch.device | None:
        """Where the logit window lives: the device, or the CPU when it would not fit on the GPU."""
        if self._device.type != "cuda":
            return None
        needed = runner.working_bytes(prepared) + runner.tile_bytes
        free, _total = torch.cuda.mem_get_info(self._device)
        if needed > 0.9 * free:
            logger.warning("This image needs about %.1f GiB on %s, %.1f GiB are free; the logits "
                           "are kept on the CPU.", needed / 2**30, self._device, free / 2**30)
            return torch.device("cpu")
        return None

    def _run(self, runner: _ModelRunner, prepared: NnunetInput) -> np.ndarray:
        runner.warm_up()
        results_device = self._results_device(runner, prepared)
        try:
            return runner.predict(prepared, results_device)
        except torch.cuda.OutOfMemoryError as exc:
            if self._device.type != "cuda" or results_device is not None:
                raise ModelError(f"Out of memory during inference: {exc}") from exc
            logger.warning("CUDA out of memory on %s; keeping this case's logits on the CPU.",
                           self._device)
            torch.cuda.empty_cache()
            return runner.predict(prepared, torch.device("cpu"))
        finally:
            if self._device.type == "cuda":
                torch.cuda.empty_cache()

    # -- reporting ----------------------------------------------------------

    def stage_timings(self) -> dict[str, float]:
        """Seconds of the last :meth:`segment` per part, summed over the pack's models.

        ``preprocess`` (nnU-Net's cropping, normalisation, resampling),
        ``network`` (forward passes), ``export`` (resampling the logits back and
        the argmax, interleaved with the window) and ``other`` (the rest:
        reorientation, merging, the window's bookkeeping).
        """
        names = {"preprocess_s": "preprocess", "predict_s": "network", "export_s": "export"}
        parts = dict.fromkeys(names.values(), 0.0)
        for key, seconds in self.last_timings.items():
            part = names.get(key.rsplit(".", 1)[-1])  # "<model id>.predict_s" in multi-model packs
            if part is not None:
                parts[part] += seconds
        total = self.last_timings.get("total_s", 0.0)
        parts["other"] = max(0.0, total - sum(parts.values()))
        return parts

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
            "precision": self._precision,
            "compiled": all(r.compiled for r in self._runners),
            "resampling": first["resampling"],
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

