"""The demo input: a phantom MR series written as DICOM, for ``segnode demo``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dicom_io.phantom_series import write_series
from model.phantom import Phantom, make_grid

__all__ = ["write_demo_series"]

#: Slice, row and column spacing of the demo series (mm): a whole-trunk
#: axial MR at a resolution the demo model was trained for.
DEMO_SPACING_MM = (5.0, 3.0, 3.0)


def write_demo_series(folder: Path, *, seed: int = 7) -> list[Path]:
    """Write a deterministic axial phantom MR series into ``folder``.

    Reuses the files when ``folder`` already holds the same series (same
    seed gives the same UIDs and pixels), so a second ``make run`` does not
    rewrite its input.
    """
    existing = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    if existing:
        return existing
    rng = np.random.default_rng(seed)
    phantom = Phantom(seed, jitter=0.5)
    grid = make_grid("axial", DEMO_SPACING_MM)
    image, _ = phantom.sample(grid, modality="MR", rng=rng)
    return write_series(
        image, folder, modality="MR", series_description="segnode demo phantom T1",
        uid_seed=f"segnode-demo-{seed}",
    )
