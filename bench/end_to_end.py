"""End to end from DICOM to DICOM-SEG: ``segnode segment`` next to MRSegmentator 2.0's DICOM path.

What is measured
----------------
A phantom MR series of 48 axial slices of 128 x 128 (5 x 2.5 x 2.5 mm,
single-frame files) and one nnU-Net model folder, used by both: by default
segnode's built-in demo model (a trained 11-structure network with MRSegmentator
label numbers), copied to the work folder; ``--model-folder`` takes any other.

- ``MRSegmentator 2.0``: its documented DICOM route, three processes:
  ``dcm_helper d2n`` (DICOM to NIfTI), ``mrsegmentator --fold 0 --cpu_only``
  with ``MRSEG_WEIGHTS_PATH`` pointing at the model folder (its "legacy"
  mode: a folder with ``plans.json`` is used as the nnU-Net model), and
  ``dcm_helper n2seg`` (NIfTI to DICOM-SEG). ``mrsegmentator==2.0.0`` is
  installed with ``--no-deps`` into its own venv under ``.bench/`` that sees
  segnode's venv for torch, nnU-Net, pydicom and highdicom (MRSegmentator
  pins torch <= 2.10 and nnunetv2 <= 2.8.0; the pair here is 2.14.1 / 2.8.1).
- ``segnode``: one ``segnode segment SERIES --out OUT --model FOLDER``
  process: reading, conversion, inference, export, DICOM-SEG, SR, label
  NIfTI, preview and the run manifest. Nothing is subtracted.

Time is the wall time of the process(es) from start to exit; memory is the
largest peak resident set of any one process (``ru_maxrss`` of the waited
children, which includes nnU-Net's worker processes). Runs are interleaved,
R times each; the table shows medians. Each run starts with an empty output
folder.

Usage (about 3 minutes on 2 cores, R=3): ``.venv/bin/python bench/end_to_end.py
[--repeat R] [--model-folder DIR] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._child import BenchError, run_json_child  # noqa: E402

WORK = REPO / ".bench" / "end_to_end"
PEER_VENV = REPO / ".bench" / "mrsegmentator-venv"
PEER = "mrsegmentator==2.0.0"
CASES = ("segnode", "MRSegmentator 2.0")


def write_series(folder: Path) -> Path:
    """The 48 x 128 x 128 phantom series (written once)."""
    sys.path.insert(0, str(REPO))
    from tests.peers import write_phantom_series

    if not folder.exists():
        write_phantom_series(folder, uid_seed="bench-end-to-end",
                             fov_mm=(240.0, 320.0, 320.0), spacing_mm=(5.0, 2.5, 2.5), seed=5)
    return folder


def install_peer() -> Path:
    """MRSegmentator 2.0 in its own venv that sees segnode's packages; returns its bin folder."""
    bin_dir = PEER_VENV / "bin"
    if (bin_dir / "mrsegmentator").exists():
        return bin_dir
    base = subprocess.run([sys.executable, "-c", "import sys; print(sys.base_prefix)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    python = Path(base) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(python), "-m", "venv", str(PEER_VENV)], check=True)
    peer_site = next((PEER_VENV / "lib").glob("python*/site-packages"))
    ours = next((REPO / ".venv" / "lib").glob("python*/site-packages"))
    (peer_site / "segnode-venv.pth").write_text(f"{ours}\n")
    result = subprocess.run([str(bin_dir / "pip"), "install", "--quiet", "--no-deps", PEER],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"could not install {PEER}: {result.stderr[-1500:]}")
    return bin_dir


def _timed(commands: Sequence[Sequence[str]], env: dict[str, str]) -> tuple[float, float]:
    """Run the commands one after the other; wall seconds and the largest peak RSS (GiB)."""
    started = time.perf_counter()
    for command in commands:
        result = subprocess.run(list(command), capture_output=True, text=True, env=env,
                                cwd=WORK, timeout=1800)
        if result.returncode != 0:
            raise BenchError(f"{command[0]} exited {result.returncode}: "
                             f"{(result.stdout + result.stderr)[-2000:]}")
    seconds = time.perf_counter() - started
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def run_case(name: str, series: Path, model: Path) -> dict:
    """One run of one case in a child process of this one (for its own ru_maxrss)."""
    out = WORK / f"out-{name.split()[0].lower()}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if name == "segnode":
        commands = [[str(REPO / ".venv" / "bin" / "segnode"), "segment", str(series),
                     "--out", str(out), "--model", str(model)]]
    else:
        bin_dir = PEER_VENV / "bin"
        env["MRSEG_WEIGHTS_PATH"] = str(model)
        commands = [
            [str(bin_dir / "dcm_helper"), "d2n", "-i", str(series), "-o", str(out / "nifti")],
            ["/bin/sh", "-c", f'"{bin_dir / "mrsegmentator"}" -i "$(ls {out}/nifti/*.nii.gz | '
                              f'head -1)" --outdir {out}/seg --fold 0 --cpu_only --no_tqdm'],
            ["/bin/sh", "-c", f'"{bin_dir / "dcm_helper"}" n2seg -n "$(ls {out}/seg/*.nii.gz | '
                              f'head -1)" -t {series} -o {out}/seg.dcm'],
        ]
    seconds, peak = _timed(commands, env)
    produced = sorted(str(p.relative_to(out)) for p in out.rglob("*.dcm"))
    if not produced:
        raise BenchError(f"{name} wrote no DICOM file into {out}")
    return {"seconds": seconds, "peak_gib": peak, "dicom_outputs": produced}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median shown)")
    parser.add_argument("--model-folder", type=Path, help="nnU-Net model folder for both "
                        "(default: a copy of segnode's demo model)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--run", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    series = write_series(WORK / "series")
    model = args.model_folder
    if model is None:
        model = WORK / "model"
        if not model.exists():
            shutil.copytree(REPO / "model" / "demo_model", model)
    if args.run:
        print(json.dumps(run_case(args.run, series, model.resolve())))
        return 0
    problems: dict[str, str] = {}
    try:
        install_peer()
    except (BenchError, subprocess.CalledProcessError, StopIteration) as exc:
        problems["MRSegmentator 2.0"] = f"not installed: {exc}"
    results: dict[str, list[dict]] = {name: [] for name in CASES}
    for _ in range(args.repeat):
        for name in CASES:
            if name in problems:
                continue
            try:
                results[name].append(run_json_child(__file__, name, (
                    "--model-folder", str(model.resolve()))))
            except BenchError as exc:
                problems[name] = str(exc)
    rows = []
    medians = {name: {key: statistics.median(r[key] for r in runs)
                      for key in ("seconds", "peak_gib")}
               for name, runs in results.items() if runs}
    print(f"DICOM series 48 x 128 x 128 to DICOM-SEG, model {model}, median of {args.repeat}")
    print(f"{'stage':24s} {'segnode':>9s} {'MRSeg 2.0':>10s} {'segnode/MRSeg':>14s}")
    ours, theirs = medians.get("segnode"), medians.get("MRSegmentator 2.0")
    for key, label in (("seconds", "wall time s"), ("peak_gib", "peak memory GiB")):
        a = ours[key] if ours else None
        b = theirs[key] if theirs else None
        ratio = a / b if a is not None and b else None
        print(f"{label:24s} {a if a is not None else float('nan'):9.2f} "
              f"{b if b is not None else float('nan'):10.2f} "
              f"{f'{ratio:13.2f}x' if ratio else '             -'}")
        rows.append({"stage": label, "segnode": a, "peer": b, "segnode_over_peer": ratio})
    for name, runs in results.items():
        if runs:
            print(f"{name} wrote: {', '.join(runs[0]['dicom_outputs'])}")
    for name, problem in problems.items():
        print(f"{name}: {problem}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "runs": results, "problems": problems},
                                        indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
