"""The streaming sliding window and export against torch's own interpolation and a full window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from model.device import cpu_has_native_bf16, resolve_precision
from model.sliding_window import StreamingPredictor, _StreamingExport, working_bytes
from segnode_errors import ConfigError


def _export_in_chunks(logits: torch.Tensor, out_shape: tuple[int, int, int], modes: tuple,
                      chunks: list[int]) -> np.ndarray:
    labels = np.zeros(out_shape, dtype=np.uint8)
    export = _StreamingExport(tuple(logits.shape[1:]), out_shape, modes, labels)
    start = 0
    for size in chunks:
        export.push(logits[:, start:start + size].clone())
        start += size
    assert start == logits.shape[1] and export.done
    return labels


@pytest.mark.parametrize("in_shape,out_shape", [
    ((17, 20, 24), (40, 31, 26)),  # upsampling on every axis
    ((40, 31, 26), (17, 20, 24)),  # downsampling
    ((12, 16, 16), (12, 16, 16)),  # identity
])
def test_streaming_export_equals_trilinear_interpolation_then_argmax(in_shape, out_shape) -> None:
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(size=(7, *in_shape)).astype(np.float32))
    expected = F.interpolate(logits[None], size=out_shape, mode="trilinear",
                             antialias=False)[0].argmax(0).numpy()
    for chunks in ([in_shape[0]], [1] * in_shape[0], [5, 1, 3, in_shape[0] - 9]):
        got = _export_in_chunks(logits, out_shape, ("linear",) * 3, chunks)
        assert np.mean(got == expected) >= 0.9999  # float rounding may flip a near tie


def test_streaming_export_separate_z_equals_nnunets_torch_resampling() -> None:
    from nnunetv2.preprocessing.resampling.resample_torch import resample_torch_fornnunet

    rng = np.random.default_rng(2)
    logits = torch.from_numpy(rng.normal(size=(5, 9, 30, 28)).astype(np.float32))
    out_shape = (23, 41, 19)
    theirs = resample_torch_fornnunet(logits, out_shape, (4.0, 1.0, 1.0), (1.6, 0.7, 1.5),
                                      force_separate_z=True).argmax(0).numpy()
    ours = _export_in_chunks(logits, out_shape, ("nearest", "linear", "linear"), [4, 2, 3])
    assert np.mean(ours == theirs) >= 0.9999


class _Probe(torch.nn.Module):
    """A fixed 'network': smooth logits that depend on position and input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, channels, 3, padding=1)
        torch.manual_seed(0)
        torch.nn.init.normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _full_window_reference(net: torch.nn.Module, data: torch.Tensor, patch: tuple,
                           step: float) -> np.ndarray:
    from nnunetv2.inference.sliding_window_prediction import (
        compute_gaussian,
        compute_steps_for_sliding_window,
    )

    steps = compute_steps_for_sliding_window(data.shape[1:], patch, step)
    g = compute_gaussian(patch, 1.0 / 8, 10, dtype=torch.float32, device=torch.device("cpu"))
    total = torch.zeros((4, *data.shape[1:]))
    weight = torch.zeros(data.shape[1:])
    with torch.no_grad():
        for z in steps[0]:
            for y in steps[1]:
                for x in steps[2]:
                    region = (slice(z, z + patch[0]), slice(y, y + patch[1]),
                              slice(x, x + patch[2]))
                    total[(slice(None), *region)] += net(data[(slice(None), *region)][None])[0] * g
                    weight[region] += g
    return (total / weight).argmax(0).numpy()


def test_streamed_window_equals_the_whole_volume_window() -> None:
    """Keeping only one patch height of logits changes nothing (and padding is undone)."""
    net = _Probe(4).eval()
    rng = np.random.default_rng(3)
    data = torch.from_numpy(rng.normal(size=(1, 37, 21, 18)).astype(np.float32))
    patch = (8, 12, 10)
    predictor = StreamingPredictor([net], patch, 4, torch.device("cpu"), tile_step=0.5)
    got = predictor.predict(data, data.shape[1:], ("linear",) * 3)
    assert np.array_equal(got, _full_window_reference(net, data, patch, 0.5))
    assert predictor.timings["network_s"] > 0
    small = data[:, :5, :7, :6]  # smaller than the patch: padded, then cropped back
    got_small = predictor.predict(small, small.shape[1:], ("linear",) * 3)
    assert got_small.shape == (5, 7, 6)


def test_two_folds_average_per_tile() -> None:
    a, b = _Probe(4).eval(), _Probe(4).eval()
    with torch.no_grad():
        b.conv.weight.mul_(-0.5)
    data = torch.from_numpy(np.random.default_rng(4).normal(size=(1, 16, 12, 12))
                            .astype(np.float32))
    both = StreamingPredictor([a, b], (8, 12, 12), 4, torch.device("cpu"), tile_step=0.5)

    class _Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (a(x) + b(x)) / 2

    mean = StreamingPredictor([_Mean()], (8, 12, 12), 4, torch.device("cpu"), tile_step=0.5)
    shape = data.shape[1:]
    assert np.array_equal(both.predict(data, shape, ("linear",) * 3),
                          mean.predict(data, shape, ("linear",) * 3))


def test_working_bytes_do_not_grow_with_the_scan_length() -> None:
    one = working_bytes(41, (96, 128, 160), (260, 320), (260, 320))
    # the window: 42 arrays of one patch height; the export: 41 channels of a few planes
    assert one == 42 * 96 * 260 * 320 * 4 + 41 * 40 * 260 * 320 * 4
    assert one < 2 * 2**30


def test_precision_choice(tmp_path) -> None:
    flags = tmp_path / "cpuinfo"
    flags.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    plain = tmp_path / "plain"
    plain.write_text("flags\t\t: fpu avx2\n")
    cpu = torch.device("cpu")
    assert cpu_has_native_bf16(str(flags)) and not cpu_has_native_bf16(str(plain))
    assert resolve_precision("auto", cpu, cpuinfo=str(flags)) == "bf16"
    assert resolve_precision("auto", cpu, cpuinfo=str(plain)) == "fp32"
    assert resolve_precision("FP32", cpu) == "fp32"

    class Gpu:
        def __init__(self, bf16: bool) -> None:
            self.bf16 = bf16

        def is_bf16_supported(self) -> bool:
            return self.bf16

    gpu = torch.device("cuda", 0)
    assert resolve_precision("auto", gpu, cuda=Gpu(True)) == "bf16"
    assert resolve_precision("auto", gpu, cuda=Gpu(False)) == "fp16"
    with pytest.raises(ConfigError, match="'fp16' - the CPU path"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="Invalid 'precision' value 'half'"):
        resolve_precision("half", cpu)
