"""The ``segnode`` command line: a thin layer over :mod:`node.pipeline` and the model store."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from segnode_errors import SegnodeError

__all__ = ["main", "build_parser"]

logger = logging.getLogger("segnode")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model pack name or nnU-Net model folder (default: demo)")
    parser.add_argument("--models-dir", type=Path, help="model store folder")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--seg-type", choices=("binary", "labelmap"), default="binary", help="DICOM-SEG type"
    )
    parser.add_argument(
        "--folds", type=int, nargs="+", help="folds to ensemble (default: 1 on CPU, all on CUDA)"
    )
    parser.add_argument("--tile-step", type=float, help="sliding-window step, fraction of patch")
    parser.add_argument("--report", type=Path, help="write a JSON manifest of the run here")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="segnode", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    segment = sub.add_parser("segment", help="segment a DICOM folder or a NIfTI file")
    segment.add_argument("input", type=Path, help="folder of DICOM files, or a .nii/.nii.gz file")
    segment.add_argument("--out", type=Path, required=True, help="output folder")
    _add_run_options(segment)

    demo = sub.add_parser("demo", help="write a phantom MR series and segment it")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    _add_run_options(demo)

    models = sub.add_parser("models", help="list or install model packs")
    models.add_argument("--models-dir", type=Path, help="model store folder")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="list installed model packs")
    install = models_sub.add_parser("install", help="install a model pack")
    install.add_argument("source", help="known name (mrsegmentator), a .zip file or a URL")
    install.add_argument("--sha256", help="expected SHA-256 of the zip (hex)")
    install.add_argument("--name", help="name to install under (default: from the pack)")
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pydicom", "highdicom", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``segnode`` command; return the process exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    from node import commands

    handlers = {
        "segment": commands.segment,
        "demo": commands.demo,
        "models": commands.models,
    }
    try:
        return handlers[args.command](args)
    except SegnodeError as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
