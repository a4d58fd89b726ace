"""The Dockerfile's pack loop: NAME downloads, NAME=FILE installs from pack-archives/.

No Docker engine runs here, so the loop is cut out of the Dockerfile and run
by sh with a ``segnode`` on PATH that records its arguments.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.node.conftest import REPO


def _pack_loop() -> str:
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"for spec in \$SEGNODE_PACKS; do.*?done", text, re.S)
    assert match, "the pack loop is missing from the Dockerfile"
    return match.group(0).replace("\\\n", "\n")


def test_pack_specs_become_install_commands(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "segnode"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n')
    fake.chmod(0o755)
    script = f'SEGNODE_PACKS="mrsegmentator mrannotator-spine=MRAnnotator.zip"\n{_pack_loop()}\n'
    result = subprocess.run(["sh", "-e", "-c", script], capture_output=True, text=True,
                            env={"PATH": f"{fake.parent}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls").read_text().splitlines() == [
        "models install mrsegmentator",
        "models install mrannotator-spine --from /tmp/pack-archives/MRAnnotator.zip",
    ]
    assert (REPO / "pack-archives" / "README.md").is_file()  # COPY needs the folder


def test_the_images_configuration_edits_give_a_valid_configuration(tmp_path: Path) -> None:
    """The Dockerfile's sed edits of config.yaml, applied here: each hits one line, the result
    validates, the DICOM listener (not the dashboard) opens to the network."""
    from node.config import load_config

    text = (REPO / "Dockerfile").read_text()
    expressions = re.findall(r"-e '(s\|[^']+)'", text)
    assert len(expressions) >= 7
    config = tmp_path / "config.yaml"
    shutil.copy(REPO / "config.yaml", config)
    before = config.read_text().splitlines()
    for expression in expressions:
        subprocess.run(["sed", "-i", "-e", expression, str(config)], check=True)
    after = config.read_text().splitlines()
    changed = [a for a, b in zip(after, before, strict=True) if a != b]
    assert len(changed) == len(expressions), changed  # one line per edit
    loaded = load_config(config)
    assert loaded.node.host == "0.0.0.0" and loaded.web.host == "127.0.0.1"
    assert loaded.rules[0].model == ("mrsegmentator",)
    assert str(loaded.storage.spool_dir) == "/var/lib/segnode/spool"
