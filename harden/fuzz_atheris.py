"""Coverage-guided fuzzing of the same targets with atheris (libFuzzer), for ``make fuzz``.

The input is the file itself: one instance for ``receive`` and ``series``
(the series is that file plus the rest of a phantom series), the YAML text
for ``config``. libFuzzer mutates it, guided by the coverage of pydicom,
highdicom, PyYAML and segnode's own code; half of the mutations are
segnode's DICOM- and YAML-aware ones (:mod:`harden.mutate`). The corpus
starts from the seeds of :mod:`harden.seeds`. A broken promise or an
escaping exception is a crash; libFuzzer's ``-timeout`` and
``-rss_limit_mb`` turn hangs and unbounded memory into crashes too. Each
crash is saved as ``crash-*`` in the working folder.

Usage: ``.venv/bin/python -m harden.fuzz_atheris TARGET [--seconds S] [--out DIR]``
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["pydicom", "highdicom", "yaml", "dicom_io", "node"]):
    from harden.fuzz_targets import TARGETS, Finding, FuzzInput, Target
    from harden.mutate import mutate_config, mutate_dicom
    from harden.seeds import Seeds, build_seeds

__all__ = ["main"]

_TARGETS = ("receive", "series", "config")


def _write_corpus(target: str, seeds: Seeds, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    items = ([c.encode() for c in seeds.configs] if target == "config" else seeds.instances)
    for n, data in enumerate(items):
        (corpus / f"seed-{n:03d}").write_bytes(data)


def _input(target: str, data: bytes, seeds: Seeds) -> FuzzInput:
    if target == "receive":
        return FuzzInput({"instance.dcm": data}, ["libfuzzer"])
    if target == "config":
        return FuzzInput({"config.yaml": data}, ["libfuzzer"])
    rest = {f"{n:03d}.dcm": blob for n, blob in enumerate(seeds.series[0][1:], start=1)}
    return FuzzInput({"000.dcm": data, **rest}, ["libfuzzer"])


def _mutator(target: str):
    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        if target == "config":
            text, _ = mutate_config(data.decode("utf-8", "replace"), rng)
            return text.encode("utf-8", "replace")[:max_size]
        return mutate_dicom(data, rng)[0][:max_size]
    return mutate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", choices=_TARGETS)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path(".harden/atheris"))
    args, libfuzzer_args = parser.parse_known_args()
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    seeds = build_seeds()
    folder = (args.out / args.target).resolve()
    corpus = folder / "corpus"
    _write_corpus(args.target, seeds, corpus)
    target: Target = TARGETS[args.target](seeds, folder / "work")

    def one_input(data: bytes) -> None:
        try:
            target.run(_input(args.target, data, seeds))
        except Finding:
            raise
        except MemoryError as exc:  # under -rss_limit_mb this is the finding
            raise Finding("out of memory") from exc

    atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}", "-timeout=20",
                   "-rss_limit_mb=4096", f"-artifact_prefix={folder}/", "-max_len=4194304",
                   *libfuzzer_args, str(corpus)],
                  one_input, custom_mutator=_mutator(args.target))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
