"""The Dockerfile's pack loop: NAME downloads, NAME=FILE installs from pack-archives/.

No Docker engine runs here, so the loop is cut out of the Dockerfile and run
by sh with a ``segnode`` on PATH that records its arguments.
"""

from __future__ import annotations

import re
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
