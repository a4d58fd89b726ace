"""Stitching cost: seconds and peak memory of segnode's stitch() on a NAKO-sized case.

What is measured
----------------
Four axial MR stations of 87 x 260 x 320 voxels (1.4 x 1.4 mm in plane,
3 mm slices, float32, 27.6 MiB each), 229 mm apart so that neighbours
overlap by 32 mm, stitch into 316 x 260 x 320 voxels (948 mm). Station 0
lies on the stitched slice lattice, the others 1/3 slice off it (table
positions are not multiples of the slice spacing), so every resampling
interpolates. The content is the organs of :mod:`model.phantom` with the
trunk cross-section extended over the whole length, evaluated with numpy
exactly on each station's grid (``Phantom.sample`` takes about 7 s and
1 GB per station at this size); each station has its own gain (MR
stations differ) and noise ``|signal + N(0, 20)|``. The cases:

- ``segnode stitch()``: :func:`dicom_io.stitch.stitch`, intensity matching
  on (MR), and with ``match_intensities=False`` (as for CT);
- ``peer: SimpleITK resample + average``: the plain way, SimpleITK only:
  each station resampled (linear) onto the same grid
  (:func:`dicom_io.stitch.stitched_grid`), and a mask of ones resampled
  (nearest) with it, summed, divided by the count where covered;
- ``segnode labels_to_station() x4``: a uint8 label volume of the stitched
  size mapped back onto each of the four stations.

Every run is a fresh process (this script with ``--run CASE``). It builds
the inputs, makes one warm-up call on a 16 x 16 in-plane copy of them (ITK
thread pool, first use of the libraries' code), hands freed heap memory
back to the system (glibc ``malloc_trim``; else the call could reuse
resident pages unseen), resets the kernel's high-water mark of its
resident set (``/proc/self/clear_refs``: ``getrusage``'s ``ru_maxrss``
cannot be reset and would still hold the transients of building the
inputs), then times one call with ``time.perf_counter`` (and its CPU
time, user and system, with ``getrusage``). "peak RSS" is the
high-water mark (VmHWM) after the call minus the resident set (VmRSS)
before it; it counts the output, which is still alive. The first run of
every case then makes one more call under ``tracemalloc`` for "numpy
peak": the most memory numpy (and Python) held at once during the call,
which leaves out SimpleITK's own image buffers. Cases are interleaved,
each run R times; the table shows medians.

Usage (about 70 s on 2 cores with R=3): ``.venv/bin/python bench/stitch.py [--repeat R]``
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Measure the checkout's packages, installed or not.
sys.path.insert(0, str(REPO))

import highdicom as hd  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from bench._child import BenchError, reset_peak_rss, run_json_child, status_mib  # noqa: E402
from dicom_io.stitch import labels_to_station, stitch, stitched_grid  # noqa: E402
from model.phantom import MR_INTENSITY, Phantom, make_grid  # noqa: E402

PIXEL_MM = 1.4
SLICE_MM = 3.0
ROWS, COLUMNS = 260, 320
STATION_SLICES = 87
STATION_STRIDE_MM = 229.0
#: Intensity factor of each station (their number is the number of stations).
STATION_GAINS = (1.0, 1.15, 0.9, 1.05)
NOISE_SIGMA = 20.0
#: The trunk of model.phantom: semi-axes in x and y, fat layer (mm).
BODY_SEMI_MM = (175.0, 125.0)
FAT_MM = 15.0
WARM_UP_IN_PLANE = 16
RUN_TIMEOUT_S = 300.0
MIB = 2**20


@dataclass(frozen=True)
class Inputs:
    """The station images and a label volume on their stitched grid."""

    stations: list[hd.Volume]
    labels: hd.Volume


@dataclass(frozen=True)
class Case:
    """One measured job: what it runs and which input arrays it reads."""

    name: str
    run: Callable[[Inputs], list[np.ndarray]]
    reads: Callable[[Inputs], list[np.ndarray]]


@dataclass(frozen=True)
class RunResult:
    """One call in one fresh process."""

    case: str
    seconds: float
    user_s: float
    sys_s: float
    peak_rss_mib: float
    numpy_peak_mib: float | None
    input_mib: float
    output_mib: float
    output_shapes: list[list[int]]


# ---------------------------------------------------------------------------
# data


def sample(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free MR intensities (float32) and labels (uint8) of the phantom on an axial grid."""
    z, y, x = (affine[axis, 3] + affine[axis, 2 - axis] * np.arange(n)
               for axis, n in zip((2, 1, 0), shape, strict=True))
    radius = (x[None, :] / BODY_SEMI_MM[0]) ** 2 + (y[:, None] / BODY_SEMI_MM[1]) ** 2
    inner = ((x[None, :] / (BODY_SEMI_MM[0] - FAT_MM)) ** 2
             + (y[:, None] / (BODY_SEMI_MM[1] - FAT_MM)) ** 2)
    plane = np.select([inner <= 1.0, radius <= 1.0],
                      [MR_INTENSITY["muscle"], MR_INTENSITY["fat"]], 0.0)
    image = np.broadcast_to(plane.astype(np.float32), shape).copy()
    labels = np.zeros(shape, np.uint8)
    for organ in Phantom().organs:
        steps = [(coords - centre) / semi for coords, centre, semi
                 in zip((z, y, x), organ.center[::-1], organ.semi[::-1], strict=True)]
        within = [np.flatnonzero(np.abs(step) <= 1.0) for step in steps]
        if not all(index.size for index in within):
            continue
        box = tuple(slice(index[0], index[-1] + 1) for index in within)
        dz, dy, dx = (step[part] for step, part in zip(steps, box, strict=True))
        across = dy[:, None] ** 2 + dx[None, :] ** 2
        inside = (np.broadcast_to(across <= 1.0, (dz.size, *across.shape))
                  if organ.kind == "cylinder" else dz[:, None, None] ** 2 + across <= 1.0)
        image[box][inside] = MR_INTENSITY[organ.name]
        labels[box][inside] = organ.label
    return image, labels


def build_inputs(rows: int = ROWS, columns: int = COLUMNS) -> Inputs:
    """The stations (see the module docstring) and the phantom's labels on the stitched grid."""
    rng = np.random.default_rng(0)
    frame_uid = hd.UID()
    station_mm = STATION_SLICES * SLICE_MM
    length_mm = STATION_STRIDE_MM * (len(STATION_GAINS) - 1) + station_mm
    first_centre = (station_mm - length_mm) / 2
    stations = []
    for index, gain in enumerate(STATION_GAINS):
        grid = make_grid("axial", (SLICE_MM, PIXEL_MM, PIXEL_MM),
                         fov_mm=(station_mm, rows * PIXEL_MM, columns * PIXEL_MM),
                         center_mm=(0.0, 0.0, first_centre + index * STATION_STRIDE_MM))
        image, _ = sample(grid.affine, grid.shape)
        noise = rng.standard_normal(grid.shape, dtype=np.float32) * np.float32(NOISE_SIGMA)
        stations.append(hd.Volume(np.abs(image * np.float32(gain) + noise), grid.affine,
                                  "PATIENT", frame_of_reference_uid=frame_uid))
    affine, shape = stitched_grid(stations)
    _, labels = sample(affine, shape)
    return Inputs(stations, hd.Volume(labels, affine, "PATIENT", frame_of_reference_uid=frame_uid))


# ---------------------------------------------------------------------------
# cases


def _sitk_geometry(image: sitk.Image, affine: np.ndarray) -> None:
    """Give ``image`` (from a C-order (k, j, i) array, so x is i) the grid of ``affine``."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing[::-1].tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, :3] / spacing)[:, ::-1].flatten().tolist())


def peer_average(stations: Sequence[hd.Volume]) -> np.ndarray:
    """SimpleITK only: every station resampled onto the stitched grid, averaged where covered."""
    affine, shape = stitched_grid(stations)
    grid = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkUInt8)
    _sitk_geometry(grid, affine)
    total = sitk.Image(grid.GetSize(), sitk.sitkFloat32)
    total.CopyInformation(grid)
    count = sitk.Image(grid.GetSize(), sitk.sitkUInt8)
    count.CopyInformation(grid)
    for station in stations:
        image = sitk.GetImageFromArray(station.array)
        _sitk_geometry(image, station.affine)
        ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(image)
        total += sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                               sitk.sitkFloat32)
        count += sitk.Resample(ones, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                               sitk.sitkUInt8)
    average = sitk.Divide(total, sitk.Cast(sitk.Maximum(count, 1), sitk.sitkFloat32))
    return sitk.GetArrayFromImage(average)


def _station_arrays(data: Inputs) -> list[np.ndarray]:
    return [station.array for station in data.stations]


CASES = (
    Case("segnode stitch()", lambda d: [stitch(d.stations).volume.array], _station_arrays),
    Case("segnode stitch(match_intensities=False)",
         lambda d: [stitch(d.stations, match_intensities=False).volume.array], _station_arrays),
    Case("peer: SimpleITK resample + average", lambda d: [peer_average(d.stations)],
         _station_arrays),
    Case(f"segnode labels_to_station() x{len(STATION_GAINS)}",
         lambda d: [labels_to_station(d.labels, s).array for s in d.stations],
         lambda d: [d.labels.array]),
)


# ---------------------------------------------------------------------------
# one run (child process)


def _mib(arrays: Sequence[np.ndarray]) -> float:
    return sum(a.nbytes for a in arrays) / MIB


def measure(case: Case, trace: bool) -> RunResult:
    """Time one call of ``case`` on fresh inputs; see the module docstring."""
    data = build_inputs()
    case.run(build_inputs(WARM_UP_IN_PLANE, WARM_UP_IN_PLANE))
    before = reset_peak_rss()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    outputs = case.run(data)
    seconds = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    peak = status_mib("VmHWM") - before
    output_mib = _mib(outputs)
    shapes = [list(a.shape) for a in outputs]
    numpy_peak = None
    if trace:
        del outputs
        gc.collect()
        tracemalloc.start()
        case.run(data)
        numpy_peak = tracemalloc.get_traced_memory()[1] / MIB
        tracemalloc.stop()
    return RunResult(case.name, seconds, cpu_after.ru_utime - cpu.ru_utime,
                     cpu_after.ru_stime - cpu.ru_stime, peak, numpy_peak, _mib(case.reads(data)),
                     output_mib, shapes)


# ---------------------------------------------------------------------------
# the bench (parent process)


def run_child(case: Case, trace: bool) -> RunResult:
    """``measure(case)`` in a fresh interpreter."""
    return RunResult(**run_json_child(str(Path(__file__).resolve()), case.name,
                                      ["--trace"] if trace else [], RUN_TIMEOUT_S))


def describe_machine() -> list[str]:
    """nproc, memory, Python, and the versions of the libraries doing the work."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}"
                         for name in ("numpy", "highdicom", "segnode"))
    return [
        f"machine:  {len(os.sched_getaffinity(0))} CPUs (nproc), {memory:.1f} GiB RAM, "
        f"Linux {platform.release()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        f"versions: SimpleITK {sitk.Version.VersionString()} "
        f"({sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} threads), {versions}",
    ]


_COLUMNS = (f"{'case':<40} {'seconds':>7} {'user s':>6} {'sys s':>5} {'peak RSS MiB':>12} "
            f"{'numpy peak MiB':>14} {'input MiB':>9} {'output MiB':>10} {'peak/input':>10}")


def _row(run: RunResult) -> str:
    traced = "-" if run.numpy_peak_mib is None else f"{run.numpy_peak_mib:.0f}"
    return (f"{run.case:<40} {run.seconds:>7.2f} {run.user_s:>6.2f} {run.sys_s:>5.2f} "
            f"{run.peak_rss_mib:>12.0f} {traced:>14} {run.input_mib:>9.1f} "
            f"{run.output_mib:>10.1f} {run.peak_rss_mib / run.input_mib:>10.1f}")


def median_table(results: list[RunResult]) -> list[str]:
    """One row per case: the medians over its runs, and the range of their seconds."""
    lines = [f"{_COLUMNS} {'range s':>11}"]
    for case in CASES:
        runs = [r for r in results if r.case == case.name]
        seconds = [r.seconds for r in runs]
        traced = [r.numpy_peak_mib for r in runs if r.numpy_peak_mib is not None]
        median = replace(runs[0], numpy_peak_mib=traced[0] if traced else None,
                         **{field: statistics.median(getattr(r, field) for r in runs)
                            for field in ("seconds", "user_s", "sys_s", "peak_rss_mib")})
        lines.append(f"{_row(median)} {f'{min(seconds):.2f}-{max(seconds):.2f}':>11}")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument("--run", choices=[c.name for c in CASES], help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--run``, one measurement); return 0, or 1 on failure."""
    args = parse_args(argv)
    try:
        if args.run:
            case = next(c for c in CASES if c.name == args.run)
            print(json.dumps(measure(case, args.trace).__dict__))
            return 0
        for line in describe_machine():
            print(line)
        print(f"stations: {len(STATION_GAINS)} x {STATION_SLICES} x {ROWS} x {COLUMNS} float32, "
              f"{PIXEL_MM} x {PIXEL_MM} x {SLICE_MM} mm, {STATION_STRIDE_MM:.0f} mm apart "
              f"(overlap {STATION_SLICES * SLICE_MM - STATION_STRIDE_MM:.0f} mm)\n")
        print(f"{_COLUMNS}  run")
        results: list[RunResult] = []
        for repeat in range(args.repeat):
            for case in CASES:
                result = run_child(case, trace=repeat == 0)
                results.append(result)
                print(f"{_row(result)}  {repeat + 1}", flush=True)
        stitched = " x ".join(map(str, results[0].output_shapes[0]))
        print(f"\nmedian of {args.repeat} runs (stitched volume {stitched} voxels):")
        print("\n".join(median_table(results)))
        print("\nuser s, sys s: CPU time of the process during the call (all threads; sys is "
              "mostly page faults on freshly allocated memory).\n"
              "peak RSS:   most resident memory during the call above the resident set "
              "before it (fresh process), output included.\n"
              "numpy peak: tracemalloc's peak during one call (numpy and Python allocations; "
              "not SimpleITK's image buffers).")
    except BenchError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
