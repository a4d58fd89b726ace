"""Sliding-window prediction that streams along the first axis and returns labels.

nnU-Net's stock predictor keeps the Gaussian-weighted logit sum of the whole
volume (41 channels of a whole-body scan: 2.1 GB in fp16), moves it to the
CPU, resamples every channel back to the input grid and only then takes the
argmax. Here the tiles are visited in nnU-Net's order, whose outermost loop
is the first array axis (head-foot for every shipped pack), and the logit sum
is kept for one patch height only. When the window moves on, the planes no
tile will touch again are final: they are divided by the weight sum,
resampled to the input grid and turned into labels right there, on the same
device, so only uint8 labels leave it. The volume is in effect processed as
head-foot slabs of one patch height that overlap by the tile overlap, and the
memory needed depends on the in-plane size and the patch, not on the length
of the scan (:func:`working_bytes`).

What is nnU-Net's and kept as is: the tile positions
(``compute_steps_for_sliding_window``), the Gaussian importance map
(``compute_gaussian``, sigma 1/8, scaled to 10), padding of images smaller
than a patch (``pad_nd_image``), test-time mirroring, the average over folds
(taken per tile, which is the same average because every fold sees the same
tiles and weights) and the resampling of the export (the semantics of
``resample_torch_fornnunet``: linear per axis with ``align_corners=False``,
nearest along a separately treated anisotropic axis). The resampling is done
one axis after the other (in-plane first, as nnU-Net does for anisotropic
data), which equals trilinear interpolation up to rounding.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["AxisMode", "Precision", "StreamingPredictor", "working_bytes"]

AxisMode = Literal["linear", "nearest"]
Precision = Literal["fp32", "bf16", "fp16"]
Network = Callable[[torch.Tensor], torch.Tensor]

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
_FINALIZE_PLANES = 8  # source planes divided, resampled and labelled at a time


def _axis_sampling(n_in: int, n_out: int, mode: AxisMode) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """Source indices and weights of ``F.interpolate`` (``align_corners=False``) on one axis.

    Returns ``(i0, i1, w1)``: output index ``o`` is ``(1 - w1) * in[i0] + w1 * in[i1]``.
    """
    scale = n_in / n_out
    out = np.arange(n_out, dtype=np.float64)
    if mode == "nearest":  # torch's "nearest-exact"
        i0 = np.minimum(np.floor((out + 0.5) * scale), n_in - 1).astype(np.int64)
        return i0, i0, np.zeros(n_out)
    src = np.maximum(scale * (out + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src), n_in - 1).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def _resample_plane_axes(planes: torch.Tensor, shape: tuple[int, int],
                         modes: tuple[AxisMode, AxisMode]) -> torch.Tensor:
    """Resample ``(c, k, y, x)`` to ``(c, k, *shape)`` along the last two axes."""
    c, k, y, x = planes.shape
    if (y, x) == shape:
        return planes
    flat = planes.reshape(1, c * k, y, x)
    if modes[0] == modes[1]:
        torch_mode = "bilinear" if modes[0] == "linear" else "nearest-exact"
        out = F.interpolate(flat, size=shape, mode=torch_mode, antialias=False)
    else:
        # One axis at a time: an axis whose size is kept is left as it is by either mode.
        out = flat
        for axis in (0, 1):
            size = (shape[0], out.shape[3]) if axis == 0 else (out.shape[2], shape[1])
            torch_mode = "bilinear" if modes[axis] == "linear" else "nearest-exact"
            out = F.interpolate(out, size=size, mode=torch_mode, antialias=False)
    return out.reshape(c, k, *shape)


class _StreamingExport:
    """Turns final logit planes (in order along axis 0) into labels on the export grid."""

    def __init__(self, n_in: tuple[int, int, int], n_out: tuple[int, int, int],
                 modes: tuple[AxisMode, AxisMode, AxisMode], labels: np.ndarray) -> None:
        self._n_out = n_out
        self._modes = modes
        self._i0, self._i1, w1 = _axis_sampling(n_in[0], n_out[0], modes[0])
        self._w1 = w1.astype(np.float32)
        self._labels = labels  # (z, y, x) uint8/uint16 output, filled plane by plane
        self._buffer: torch.Tensor | None = None  # in-plane-resampled source planes
        self._buffer_start = 0  # source index of the buffer's first plane
        self._next_out = 0

    def push(self, logits: torch.Tensor) -> None:
        """Add the next ``(c, k, y, x)`` final source planes; label what they complete."""
        planes = _resample_plane_axes(logits, self._n_out[1:], self._modes[1:])
        self._buffer = planes if self._buffer is None else torch.cat((self._buffer, planes), 1)
        available = self._buffer_start + self._buffer.shape[1]
        end = self._next_out
        while end < self._n_out[0] and self._i1[end] < available:
            end += 1
        for start in range(self._next_out, end, _FINALIZE_PLANES):
            self._label(start, min(end, start + _FINALIZE_PLANES))
        self._next_out = end
        if end < self._n_out[0]:
            keep_from = min(int(self._i0[end]) - self._buffer_start, self._buffer.shape[1])
            if keep_from > 0:
                self._buffer = self._buffer[:, keep_from:]
                self._buffer_start += keep_from

    def _label(self, start: int, stop: int) -> None:
        """Label output planes ``start:stop``, one plane at a time.

        Plane by plane the blend of two source planes stays in the cache; a
        chunk of planes at once (index_select, lerp, max) moves three times
        the data through memory and takes twice as long on the CPU.
        """
        assert self._buffer is not None
        buffer, offset = self._buffer, self._buffer_start
        blend = torch.empty((buffer.shape[0], *buffer.shape[2:]), dtype=buffer.dtype,
                            device=buffer.device)
        best = torch.empty(buffer.shape[2:], dtype=buffer.dtype, device=buffer.device)
        labels = torch.empty((stop - start, *buffer.shape[2:]), dtype=torch.long,
                             device=buffer.device)
        for n, plane in enumerate(range(start, stop)):
            low, high = int(self._i0[plane]) - offset, int(self._i1[plane]) - offset
            weight = float(self._w1[plane])
            if self._modes[0] == "nearest" or low == high or weight == 0.0:
                logits = buffer[:, low]
            else:
                logits = torch.lerp(buffer[:, low], buffer[:, high], weight, out=blend)
            # max(0).indices is argmax(0), first maximum on ties, about 8x faster
            # on the CPU for a reduction over the outermost axis.
            torch.max(logits, 0, out=(best, labels[n]))
        self._labels[start:stop] = labels.to(torch.uint8 if self._labels.dtype == np.uint8
                                             else torch.int32).cpu().numpy()

    @property
    def done(self) -> bool:
        """bool: every output plane has been labelled."""
        return self._next_out == self._n_out[0]


def working_bytes(channels: int, patch: Sequence[int], plane_shape: Sequence[int],
                  export_plane_shape: Sequence[int]) -> int:
    """Bytes the logit window and the export buffers need on the device (fp32).

    Parameters
    ----------
    channels : int
        Segmentation heads of the network (labels + background).
    patch : sequence of int
        Patch size ``(pz, py, px)``.
    plane_shape : sequence of int
        ``(y, x)`` of the (padded) model grid.
    export_plane_shape : sequence of int
        ``(y, x)`` of the grid the labels are exported to.

    Returns
    -------
    int
        The window (logit sum and weight sum over one patch height) plus the
        resampling buffers of one finalisation step; the network's own
        activations come on top.
    """
    pz = int(patch[0])
    plane = int(plane_shape[0]) * int(plane_shape[1])
    export_plane = int(export_plane_shape[0]) * int(export_plane_shape[1])
    window = (channels + 1) * pz * plane * 4
    # one chunk of divided logits; its in-plane resampling, the planes kept for the
    # next chunk and the one-plane blend (bounded by 4 chunks of export planes)
    export = channels * (_FINALIZE_PLANES * plane + 4 * _FINALIZE_PLANES * export_plane) * 4
    return window + export


@dataclass
class StreamingPredictor:
    """Sliding-window prediction of one model, folds ensembled per tile.

    Parameters
    ----------
    networks : sequence of callables
        One network per fold (eager or compiled modules), already on ``device``
        and in eval mode; each maps ``(1, 1, pz, py, px)`` to
        ``(1, channels, pz, py, px)`` logits.
    patch_size : sequence of int
        The configuration's patch size.
    channels : int
        Number of segmentation heads (labels including background).
    device : torch.device
        Where tiles, the logit window, the resampling and the argmax live.
    tile_step : float
        Step between tiles as a fraction of the patch size.
    mirror_axes : sequence of int, optional
        Spatial axes (0-based) for test-time mirroring; None for none.
    precision : {"fp32", "bf16", "fp16"}
        Autocast dtype of the network's forward pass; the accumulation is fp32.
    results_device : torch.device, optional
        Where the logit window, resampling and argmax live when not on
        ``device`` (the CPU, for an image whose window would not fit on the GPU).
    """

    networks: Sequence[Network]
    patch_size: Sequence[int]
    channels: int
    device: torch.device
    tile_step: float
    mirror_axes: Sequence[int] | None = None
    precision: Precision = "fp32"
    results_device: torch.device | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def predict(self, data: torch.Tensor, export_shape: Sequence[int],
                modes: tuple[AxisMode, AxisMode, AxisMode], label_dtype: type = np.uint8
                ) -> np.ndarray:
        """Labels of a preprocessed image, resampled onto ``export_shape``.

        Parameters
        ----------
        data : torch.Tensor
            Preprocessed image ``(1, z, y, x)`` float32 (any device).
        export_shape : sequence of int
            ``(z, y, x)`` the logits are resampled to before the argmax
            (nnU-Net's shape after cropping and before resampling).
        modes : tuple of {"linear", "nearest"}
            Interpolation per axis of that resampling.
        label_dtype : numpy dtype
            ``uint8``, or ``uint16`` for models with more than 255 labels.

        Returns
        -------
        numpy.ndarray
            Label indices (argmax over the channels) of shape ``export_shape``.
        """
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import (
            compute_gaussian,
            compute_steps_for_sliding_window,
        )

        patch = tuple(int(p) for p in self.patch_size)
        padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        inner = [(s.start or 0, s.stop if s.stop is not None else padded.shape[i + 1])
                 for i, s in enumerate(revert[1:])]
        shape = tuple(padded.shape[1:])
        steps = compute_steps_for_sliding_window(shape, patch, self.tile_step)
        gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10,
                                    dtype=torch.float32, device=self._results)
        labels = np.zeros(tuple(int(s) for s in export_shape), dtype=label_dtype)
        export = _StreamingExport(tuple(e - s for s, e in inner), tuple(labels.shape), modes,
                                  labels)
        window = torch.zeros((self.channels, patch[0], *shape[1:]), dtype=torch.float32,
                             device=self._results)
        weights = torch.zeros((patch[0], *shape[1:]), dtype=torch.float32, device=self._results)
        self.timings = {"network_s": 0.0, "export_s": 0.0}
        window_start = 0

        def finalize(count: int) -> None:
            started = time.perf_counter()
            lo = max(window_start, inner[0][0])
            hi = min(window_start + count, inner[0][1])
            ys, xs = slice(*inner[1]), slice(*inner[2])
            for a in range(lo - window_start, hi - window_start, _FINALIZE_PLANES):
                b = min(a + _FINALIZE_PLANES, hi - window_start)
                export.push(window[:, a:b, ys, xs] / weights[a:b, ys, xs])
            self.timings["export_s"] += time.perf_counter() - started

        with torch.inference_mode():
            for z in steps[0]:
                if z > window_start:
                    shift = z - window_start
                    finalize(shift)
                    keep = patch[0] - shift
                    window[:, :keep] = window[:, shift:].clone()
                    window[:, keep:] = 0
                    weights[:keep] = weights[shift:].clone()
                    weights[keep:] = 0
                    window_start = z
                for y, x in itertools.product(steps[1], steps[2]):
                    # contiguous, as at warm-up: a compiled network would otherwise be
                    # compiled again (for these strides, and without freezing)
                    tile = padded[None, :, z:z + patch[0], y:y + patch[1], x:x + patch[2]]
                    tile = tile.to(self.device).contiguous()
                    prediction = self.predict_tile(tile).to(self._results)
                    region = (slice(None), slice(0, patch[0]), slice(y, y + patch[1]),
                              slice(x, x + patch[2]))
                    window[region] += prediction * gaussian
                    weights[region[1:]] += gaussian
            finalize(patch[0])
        if not export.done:  # pragma: no cover - guarded by construction
            raise RuntimeError("Sliding window ended before every plane was labelled.")
        return labels

    @property
    def _results(self) -> torch.device:
        return self.results_device or self.device

    @torch.inference_mode()
    def predict_tile(self, tile: torch.Tensor) -> torch.Tensor:
        """Mean logits of all folds (and mirrorings) for one tile, fp32, ``(c, pz, py, px)``."""
        started = time.perf_counter()
        axes = [a + 2 for a in (self.mirror_axes or ())]
        flips = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        total: torch.Tensor | None = None
        autocast = _AUTOCAST.get(self.precision)
        for network in self.networks:
            with torch.autocast(self.device.type, dtype=autocast, enabled=autocast is not None):
                outputs = [network(tile)] + [torch.flip(network(torch.flip(tile, f)), f)
                                             for f in flips]
            for output in outputs:
                output = output[0].float()
                total = output if total is None else total.add_(output)
        assert total is not None
        total /= len(self.networks) * (len(flips) + 1)
        self.timings["network_s"] = (self.timings.get("network_s", 0.0)
                                     + time.perf_counter() - started)
        return total
