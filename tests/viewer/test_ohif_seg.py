"""What a radiologist sees: segnode's BINARY SEG over its series in OHIF Viewer v3.

A phantom series (grey background; bright structures that are exactly the
truth, asymmetric in x, y and z, rows != columns) and segnode's SEG of it are
stored into Orthanc with its DICOMweb plugin, and opened in OHIF 3.13.2 in
headless Chromium, for an axial and a coronal series. On the centre slice the
overlay of each structure, read off canvas screenshots with the overlay shown
and hidden, must coincide with that structure on screen (IoU > 0.85), and the
segment panel must list the structures by name in their colours.

Orthanc, the one-origin viewer server and Chromium run in one private network
namespace (Orthanc 1.10 listens on every interface). The screenshots are kept
under pytest's basetemp; the test prints where.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_io.content import AlgorithmInfo, SegmentInfo
from dicom_io.phantom_series import write_series
from dicom_io.seg import build_seg
from model.phantom import GridGeometry, make_grid
from tests.peers import NetNamespace, Orthanc, dcmtk_available, netns_available, storescu
from tests.viewer.ohif import (
    OhifUnavailable,
    ViewerServer,
    browse_seg,
    chromium_unavailable,
    dicomweb_orthanc,
    dicomweb_unavailable,
    fetch_ohif,
    write_app_config,
)
from tests.viewer.overlay import OverlayMatch, load_rgb, match_overlay

pytestmark = pytest.mark.slow

SEG_DONE = "[SEG load] SEG parse complete"
MIN_IOU = 0.85
COLOUR_TOLERANCE = 3
BACKGROUND = 250.0  # MR value; the series' window is 500 / 1200

ALGO = AlgorithmInfo(name="viewer-phantom", version="1.0.0", weights_sha256="cd" * 32)


@dataclass(frozen=True)
class Structure:
    """One bright phantom structure: its SEG description, grey value and shape in LPS mm."""

    info: SegmentInfo
    grey: float
    inside: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _liver(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Patient-right L-shaped block whose left edge moves with z."""
    block = (x >= -90) & (x <= -30 + 0.4 * z) & (y >= -50) & (y <= 20) & (z >= -50) & (z <= 40)
    return block & ~((x > -50) & (y > 0))


def _spleen(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Patient-left ellipsoid above and behind the centre: its section shrinks fast with z."""
    return ((x - 60) / 28) ** 2 + ((y - 18) / 30) ** 2 + ((z - 18) / 24) ** 2 <= 1


def _kidney(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Small block just left of the midline that ends 5 mm above the centre."""
    return (x >= -10) & (x <= 15) & (y >= -45) & (y <= 10) & (z >= -55) & (z <= 5)


#: Dimmest first (the order :func:`tests.viewer.overlay.match_overlay` wants).
STRUCTURES = (
    Structure(SegmentInfo(3, "left_kidney", ("64033007", "SCT", "Kidney"), (60, 110, 240),
                          laterality="left"), 700.0, _kidney),
    Structure(SegmentInfo(2, "spleen", ("78961009", "SCT", "Spleen"), (40, 200, 60)),
              880.0, _spleen),
    Structure(SegmentInfo(1, "liver", ("10200004", "SCT", "Liver"), (230, 80, 40)),
              1050.0, _liver),
)
SEGMENTS = [s.info for s in STRUCTURES]
#: The SEG numbers the present labels in ascending label order; OHIF lists them so.
PANEL_ORDER = [s.info.label for s in sorted(STRUCTURES, key=lambda s: s.info.number)]

GRIDS: dict[str, GridGeometry] = {
    "axial": make_grid("axial", (6.0, 4.0, 4.0), fov_mm=(126.0, 160.0, 224.0)),
    "coronal": make_grid("coronal", (6.0, 4.0, 4.0), fov_mm=(126.0, 176.0, 224.0)),
}
#: Controls: SEGs of wrong label volumes (array k, j, i) must fail the same check.
CONTROLS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "axial-one-slice-off": ("axial", lambda a: np.roll(a, 1, axis=0)),
    "coronal-left-right-flipped": ("coronal", lambda a: a[:, :, ::-1]),
}


def _skip_reason() -> str | None:
    return (netns_available() or chromium_unavailable() or dicomweb_unavailable()
            or dcmtk_available("storescu"))


@dataclass(frozen=True)
class Case:
    """One phantom series and its SEG on disk."""

    name: str
    shape: tuple[int, int, int]
    study_uid: str
    series_uid: str
    seg_series_uid: str
    folder: Path


def write_case(
    name: str, root: Path, *, grid: GridGeometry,
    corrupt: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Case:
    """Write the phantom series on ``grid`` and segnode's BINARY SEG of it.

    ``corrupt`` changes the label array before the SEG is built (a wrong SEG,
    for the controls); ``name`` seeds the UIDs, so each case is its own study.
    """
    x, y, z = grid.voxel_centres().T
    labels = np.zeros(x.shape, np.uint16)
    image = np.full(x.shape, BACKGROUND)
    for structure in STRUCTURES:
        inside = structure.inside(x, y, z)
        labels[inside], image[inside] = structure.info.number, structure.grey
    labels, image = labels.reshape(grid.shape), image.reshape(grid.shape)
    centre = labels[grid.shape[0] // 2]
    assert set(np.unique(centre)) == {0, *(s.info.number for s in STRUCTURES)}, (
        "every structure must cross the centre slice")
    folder = root / name
    seg_labels = labels if corrupt is None else np.ascontiguousarray(corrupt(labels))
    paths = write_series(grid.volume(image), folder / "source", modality="MR",
                         uid_seed=f"viewer-{name}", series_description=f"viewer {name}")
    sources = [pydicom.dcmread(p) for p in paths]
    seg = build_seg(grid.volume(seg_labels), sources, SEGMENTS, ALGO, seg_type="binary",
                    series_description=f"segnode {name}")
    (folder / "seg").mkdir()
    seg.save_as(folder / "seg" / "seg.dcm", enforce_file_format=True)
    return Case(name, grid.shape, str(sources[0].StudyInstanceUID),
                str(sources[0].SeriesInstanceUID), str(seg.SeriesInstanceUID), folder)


@dataclass
class Viewer:
    """The running set-up: namespace, Orthanc, viewer server and the stored cases."""

    ns: NetNamespace
    orthanc: Orthanc
    server: ViewerServer
    root: Path
    screenshots: Path
    cases: dict[str, Case] = field(default_factory=dict)


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        dist = fetch_ohif()
    except OhifUnavailable as exc:
        pytest.skip(f"OHIF viewer not available: {exc}")
    root = tmp_path_factory.mktemp("ohif-viewer")
    screenshots = root / "screenshots"
    screenshots.mkdir()
    print(f"\n[viewer] screenshots and logs: {root}")
    cases = {name: write_case(name, root / "data", grid=grid) for name, grid in GRIDS.items()}
    for name, (grid_name, corrupt) in CONTROLS.items():
        cases[name] = write_case(name, root / "data", grid=GRIDS[grid_name], corrupt=corrupt)
    with NetNamespace() as ns:
        orthanc = dicomweb_orthanc(root / "orthanc", ns)
        server = ViewerServer(ns, dist, write_app_config(root / "app-config.js"), orthanc.url,
                              root / "server.log")
        try:
            orthanc.start()
            sent = storescu(root / "data", "127.0.0.1", orthanc.dicom_port,
                            called_aet=orthanc.aet, netns=ns, extra_args=["-R"])
            assert sent.returncode == 0, sent.stdout + sent.stderr
            stored = orthanc.series_uids()
            for case in cases.values():
                assert stored.get(case.series_uid) == case.shape[0]
                assert stored.get(case.seg_series_uid) == 1
            server.start()
            yield Viewer(ns, orthanc, server, root, screenshots, cases)
        finally:
            server.stop()
            orthanc.stop()


def _rgb(css: str | None) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", css or "")
    return tuple(int(v) for v in numbers[:3])


def _save_comparison(path: Path, match: OverlayMatch, shape: tuple[int, int]) -> None:
    """Artefact: structure regions grey, overlay pixels in colour, agreement white."""
    canvas = np.zeros((*shape, 3), np.uint8)
    for structure, region, overlay in zip(STRUCTURES, match.regions, match.overlays, strict=True):
        canvas[region & ~overlay] = (90, 90, 90)
        canvas[overlay & ~region] = structure.info.rgb
        canvas[overlay & region] = (255, 255, 255)
    Image.fromarray(canvas).save(path)


def view_centre_slice(viewer: Viewer, name: str) -> OverlayMatch:
    """Open case ``name`` in OHIF; check SEG load, panel and slice; match the overlay."""
    case = viewer.cases[name]
    started = time.monotonic()
    job = {"base": viewer.server.url, "study_uid": case.study_uid,
           "seg_series_uid": case.seg_series_uid, "slice_count": case.shape[0],
           "name": name, "out_dir": str(viewer.screenshots), "timeout_s": 60}
    result = browse_seg(viewer.ns, job, viewer.root / "work")
    elapsed = time.monotonic() - started
    console_tail = "\n".join(result.get("console", [])[-25:])
    context = (f"\nscreenshots: {viewer.screenshots}\ntimings: {result.get('timings')}"
               f"\nconsole tail:\n{console_tail}\ndriver log:\n{result.get('log')}")
    assert "error" not in result and result["returncode"] == 0, f"{result.get('error')}{context}"
    assert any(SEG_DONE in line for line in result["console"]), f"no {SEG_DONE!r}{context}"

    titles = [row["title"] for row in result["rows"]]
    assert titles == PANEL_ORDER, context
    by_label = {s.info.label: s.info.rgb for s in STRUCTURES}
    for row in result["rows"]:
        shown, want = _rgb(row["color"]), by_label[row["title"]]
        assert len(shown) == 3 and max(abs(a - b) for a, b in zip(shown, want, strict=True)) \
            <= COLOUR_TOLERANCE, f"{row['title']}: panel colour {row['color']}, SEG {want}"

    centre = (case.shape[0] + 1) // 2
    assert (result["slice_index"], result["slice_count"]) == (centre, case.shape[0]), context
    assert result["overlay_restored_identical"], "overlay shown again differs from before"
    shown_px, hidden_px = load_rgb(result["overlay_on"]), load_rgb(result["overlay_off"])
    match = match_overlay(shown_px, hidden_px, [s.info.rgb for s in STRUCTURES])
    _save_comparison(viewer.screenshots / f"{name}-comparison.png", match, shown_px.shape[:2])
    print(f"\n[viewer] {name}: slice {result['slice_text']!r}, IoU {_ious(match)}, "
          f"{match.overlay_px} overlay px, {elapsed:.1f} s, timings {result['timings']}")
    return match


def _ious(match: OverlayMatch) -> dict[str, float]:
    return {s.info.label: round(v, 3) for s, v in zip(STRUCTURES, match.ious, strict=True)}


@pytest.mark.parametrize("name", list(GRIDS))
def test_seg_overlay_sits_on_each_structure_in_ohif(viewer: Viewer, name: str) -> None:
    match = view_centre_slice(viewer, name)
    for label, value in _ious(match).items():
        assert value > MIN_IOU, (f"{name} {label}: IoU {value} <= {MIN_IOU} ({_ious(match)}); "
                                 f"screenshots: {viewer.screenshots}")


@pytest.mark.parametrize("name", list(CONTROLS))
def test_a_wrong_seg_fails_the_same_check(viewer: Viewer, name: str) -> None:
    match = view_centre_slice(viewer, name)
    assert min(match.ious) <= MIN_IOU, f"a wrong SEG passed: IoU {_ious(match)}"
