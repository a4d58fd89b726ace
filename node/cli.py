"""The ``segnode`` command line: a thin layer over :mod:`node.pipeline` and the model store."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from segnode_errors import SegnodeError

__all__ = ["main", "build_parser", "ROLES"]

#: The parts of ``segnode serve`` (all of them by default).
ROLES = ("receiver", "dispatcher", "worker", "web")

logger = logging.getLogger("segnode")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append",
                        help="model pack name or nnU-Net model folder (default: demo); repeat "
                             "for several packs (one SEG each, one SR for all)")
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
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="autocast dtype of the network (auto: bf16 where the GPU or CPU "
                             "has it natively, else fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the network first (faster per patch; costs tens of "
                             "seconds per fold, so for large volumes or several series)")
    parser.add_argument("--reports", nargs="+", choices=("pdf", "sc"),
                        help="also write report.dcm (encapsulated PDF) and/or preview-sc.dcm "
                             "(secondary capture of the preview)")
    parser.add_argument("--no-stations", action="store_true",
                        help="segment every series on its own (no whole-body stitching)")
    parser.add_argument("--dixon-contrast", choices=("in", "opp", "water", "fat"),
                        help="Dixon contrast segmented for all four (default: opp)")
    parser.add_argument("--each-contrast", action="store_true",
                        help="stitch and segment every Dixon contrast on its own")
    parser.add_argument("--write-stitched", action="store_true",
                        help="also write the stitched image (stitched.nii.gz)")
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
    models_sub.add_parser("available", help="list the packs segnode can install, with licences")
    show = models_sub.add_parser("show", help="show a pack: models, settings, label table")
    show.add_argument("name", help="installed or installable pack name")
    install = models_sub.add_parser("install", help="install a model pack")
    install.add_argument("source", help="pack name (see 'models available'), a .zip file or a URL")
    install.add_argument("--from", dest="from_path", type=Path,
                         help="local archive, folder of archives or unpacked models of a "
                              "named pack (no download)")
    install.add_argument("--sha256", help="expected SHA-256 of the zip (hex)")
    install.add_argument("--name", help="name to install under (default: from the pack)")
    add = models_sub.add_parser("add", help="register your own nnU-Net v2 model with its codes")
    add.add_argument("name", help="pack name")
    add.add_argument("--nnunet-folder", type=Path, required=True,
                     help="trained model folder (plans.json, dataset.json, fold_N)")
    add.add_argument("--labels", type=Path, required=True,
                     help="labels.yaml: name, SNOMED CT code, laterality, colour per label")
    verify = models_sub.add_parser("verify", help="re-read every checkpoint and check its SHA-256")
    verify.add_argument("names", nargs="*", help="packs to verify (default: all installed)")
    _add_node_commands(sub)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path,
                        help="node configuration (default: $SEGNODE_CONFIG or ./config.yaml)")


def _add_node_commands(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the DICOM node (every role, or the ones named)")
    serve.add_argument("--role", action="append", choices=ROLES, dest="roles",
                       help="run only this part (repeatable): receiver (listener, assembler, "
                            "leases, broker publishing), dispatcher, worker (embedded queue), "
                            "web; default all of them")
    _config_option(serve)
    worker = sub.add_parser("worker", help="run one worker: a Celery worker, or a claimer of "
                                           "the shared catalogue's queue (embedded)")
    worker.add_argument("--device", help="cpu or cuda:N (default: the first of "
                                         "processing.device)")
    worker.add_argument("--name", help="how status shows it (default HOST/DEVICE)")
    worker.add_argument("--threads", type=int, help="torch CPU threads (default "
                        "processing.cpu_threads, else every core; several CPU workers on one "
                        "machine: cores / workers)")
    _config_option(worker)
    _config_option(sub.add_parser("status", help="listener, queues, device, disk, last errors"))

    config = sub.add_parser("config", help="check a node configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="print every problem with its key path")
    check.add_argument("file", nargs="?", help="configuration file (default: --config)")
    _config_option(check)

    jobs = sub.add_parser("jobs", help="list, show or retry jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = jobs_sub.add_parser("list", help="newest jobs first")
    listing.add_argument("--state", choices=("queued", "running", "done", "failed"))
    listing.add_argument("--limit", type=int, default=50)
    for name, text in (("show", "one job with its deliveries, as JSON"),
                       ("retry", "queue a failed or done job again")):
        one = jobs_sub.add_parser(name, help=text)
        one.add_argument("id", type=int)
        _config_option(one)
    _config_option(listing)

    outbox = sub.add_parser("outbox", help="list or retry deliveries")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    listing = outbox_sub.add_parser("list", help="newest deliveries first")
    listing.add_argument("--state", choices=("pending", "done", "failed"))
    listing.add_argument("--limit", type=int, default=100)
    _config_option(listing)
    retry = outbox_sub.add_parser("retry", help="send failed deliveries again")
    retry.add_argument("id", type=int, nargs="?", help="delivery id")
    retry.add_argument("--all", action="store_true", help="every failed delivery")
    _config_option(retry)

    echo = sub.add_parser("echo", help="C-ECHO a configured destination")
    echo.add_argument("destination", help="destination name from the configuration")
    _config_option(echo)

    corrections = sub.add_parser("corrections", help="radiologists' corrected SEGs: import, "
                                                     "list")
    corrections_sub = corrections.add_subparsers(dest="corrections_command", required=True)
    imported = corrections_sub.add_parser("import", help="take in the DICOM-SEG files of a "
                                                         "folder as corrections")
    imported.add_argument("folder", type=Path)
    _config_option(imported)
    listing = corrections_sub.add_parser("list", help="examined SEGs, newest first")
    listing.add_argument("--limit", type=int, default=50)
    _config_option(listing)

    dataset = sub.add_parser("dataset", help="training data from the corrected cases")
    dataset_sub = dataset.add_subparsers(dest="dataset_command", required=True)
    export = dataset_sub.add_parser("export", help="write an nnU-Net v2 raw dataset "
                                                   "(imagesTr, labelsTr, dataset.json)")
    export.add_argument("--model", required=True, help="the pack whose corrections to export")
    export.add_argument("--out", required=True, type=Path,
                        help="dataset folder, e.g. nnUNet_raw/Dataset501_Corrections")
    export.add_argument("--since", help="first day, YYYY-MM-DD (corrections examined then)")
    export.add_argument("--until", help="last day, YYYY-MM-DD")
    export.add_argument("--modality", help="only cases of this modality (MR, CT)")
    export.add_argument("--min-corrected", type=int, default=1, metavar="N",
                        help="only cases with at least N corrected structures (default 1)")
    export.add_argument("--manifest", type=Path, help="the case-to-study CSV (default: "
                        "beside the dataset folder, <out>-manifest.csv)")
    _config_option(export)

    evaluate = sub.add_parser("evaluate", help="Dice, HD95, volumes, vessel connectivity of "
                                               "predictions against references, as CSV")
    evaluate.add_argument("pred", help="a NIfTI or DICOM-SEG file, or a folder of them")
    evaluate.add_argument("gt", help="the reference: a file, or a folder with the same names")
    evaluate.add_argument("--labels", nargs="+", metavar="LABEL",
                          help="only these structures (names or values)")
    evaluate.add_argument("--model", help="the pack whose label table names the values "
                                          "(default: the MRSegmentator table)")
    evaluate.add_argument("--models-dir", type=Path, help="where packs are installed")
    evaluate.add_argument("--out", type=Path, help="CSV file (default: standard output)")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pydicom", "highdicom", "PIL", "matplotlib", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pynetdicom logs every PDU at INFO/DEBUG; segnode logs each association once.
    logging.getLogger("pynetdicom").setLevel(logging.INFO if verbose else logging.WARNING)


_HANDLERS = {
    "segment": ("node.commands", "segment"),
    "demo": ("node.commands", "demo"),
    "models": ("node.model_commands", "models"),
    "serve": ("node.node_commands", "serve"),
    "worker": ("node.node_commands", "worker"),
    "status": ("node.node_commands", "status"),
    "config": ("node.node_commands", "config_check"),
    "jobs": ("node.node_commands", "jobs"),
    "outbox": ("node.node_commands", "outbox"),
    "echo": ("node.node_commands", "echo"),
    "corrections": ("node.correction_commands", "corrections"),
    "dataset": ("node.correction_commands", "dataset"),
    "evaluate": ("node.evaluate", "evaluate"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``segnode`` command; return the process exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    # Import only the command's module: the node commands other than serve
    # never load torch, so they answer in a fraction of a second.
    module_name, function = _HANDLERS[args.command]
    handler = getattr(importlib.import_module(module_name), function)
    try:
        return handler(args)
    except SegnodeError as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
