"""Inputs the fuzz campaigns found breaking a promise, each now a clear rejection.

Each case is rebuilt from a phantom series (the minimal form of what the
campaign found) and must come back as a rejection naming the file or the
field, never as another exception.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config

from dicom_io.scan import SeriesFiles, find_series
from dicom_io.series import read_series
from harden.mutate import deep_sequence
from harden.seeds import build_seeds
from node.config import load_config
from segnode_errors import ConfigError


@pytest.fixture(scope="module")
def phantom_series() -> list[bytes]:
    return build_seeds(with_real_data=False).series[0]


def _write_series(folder: Path, files: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(files):
        (folder / f"{n:03d}.dcm").write_bytes(data)
    return folder


def _edited(data: bytes, **values: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in values.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    previous = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        ds.save_as(buffer)
    finally:
        pydicom_config.settings.writing_validation_mode = previous
    return buffer.getvalue()


def _reasons(folder: Path) -> str:
    found = find_series(folder)
    assert len(found) == 1
    result = read_series(found[0])
    assert not result.volumes
    return " | ".join(r.reason for r in result.rejected)


@pytest.mark.parametrize(("values", "expected"), [
    ({"PixelSpacing": "nan\\nan"}, "PixelSpacing [nan, nan] is not finite"),
    ({"ImagePositionPatient": "0\\inf\\0"}, "ImagePositionPatient [0.0, inf, 0.0] is not finite"),
    ({"PixelSpacing": ""}, "missing PixelSpacing"),
    ({"ImagePositionPatient": "1\\2\\3\\4"}, "ImagePositionPatient has 4 values, not 3"),
    ({"Columns": None}, "Rows or Columns is missing"),
    ({"Rows": 0}, "Rows x Columns is 0 x 16"),
    ({"FrameOfReferenceUID": "C:\\win"}, "FrameOfReferenceUID"),
])
def test_broken_geometry_on_every_slice_is_a_rejection_naming_the_field(
        tmp_path: Path, phantom_series: list[bytes], values: dict, expected: str) -> None:
    folder = _write_series(tmp_path / "s", [_edited(d, **values) for d in phantom_series])
    assert expected in _reasons(folder)


def test_a_sequence_nested_1000_deep_is_a_rejection_and_the_rest_of_the_series_is_read(
        tmp_path: Path, phantom_series: list[bytes]) -> None:
    first = phantom_series[0]
    at = first.find(b"\xe0\x7f\x10\x00")
    files = [first[:at] + deep_sequence(1000) + first[at:], *phantom_series[1:]]
    folder = _write_series(tmp_path / "s", files)
    # The folder scan skips the file; the node hands the reader every catalogued file.
    assert sum(len(s.paths) for s in find_series(folder)) == len(files) - 1
    result = read_series(SeriesFiles("1.2.3", tuple(sorted(folder.iterdir()))))
    assert any("nested too deeply" in r.reason for r in result.rejected)
    assert [v.volume.spatial_shape[0] for v in result.volumes] == [len(files) - 1]


def test_an_undecodable_element_is_a_rejection_naming_its_tag(
        tmp_path: Path, phantom_series: list[bytes]) -> None:
    data = bytearray(phantom_series[0])
    at = data.find(b"\x08\x00\x3e\x10")  # SeriesDescription (0008,103E), LO
    data[at + 4: at + 6] = b"\x55\xdf"  # not a VR
    folder = _write_series(tmp_path / "s", [bytes(data), *phantom_series[1:]])
    result = read_series(find_series(folder)[0])
    assert any("element (0008,103E) cannot be decoded" in r.reason for r in result.rejected)


def test_a_samples_per_pixel_of_the_wrong_vr_is_a_rejection_naming_it(
        tmp_path: Path, phantom_series: list[bytes]) -> None:
    """Found by the long series campaign: US turned IS, a value int() cannot read."""
    data = bytearray(phantom_series[0])
    at = data.find(b"\x28\x00\x02\x00US\x02\x00")  # SamplesPerPixel (0028,0002)
    assert at > 0
    data[at + 4: at + 6] = b"IS"
    folder = _write_series(tmp_path / "s", [bytes(data), *phantom_series[1:]])
    result = read_series(SeriesFiles("1.2.3", tuple(sorted(folder.iterdir()))))
    assert any("SamplesPerPixel" in r.reason and "not a number" in r.reason
               for r in result.rejected), [r.reason for r in result.rejected]
    assert [v.volume.spatial_shape[0] for v in result.volumes] == [len(phantom_series) - 1]


@pytest.mark.parametrize(("text", "expected"), [
    ("destinations: true\n", "destinations"),
    # Found by atheris: PyYAML's scanner takes seconds on 10 000 open brackets, hours on
    # 100 000; a linear pass refuses them before it runs.
    ("rules: " + "[" * 10000 + "]" * 10000 + "\n", "10000 brackets open at once"),
    ("rules: " + "[" * 100000 + "\n", "100000 brackets open at once"),
    ("rules: " + "[" * 129 + "]" * 129 + "\n", "129 brackets open at once"),
    ("node: {ae_title: X}\n" + "#" * (1 << 20) + "\n", "more than 1048576"),
    ("rules: " + "[" * 50 + "]" * 50 + "\n", "more than 32 deep"),
])
def test_bad_configuration_shapes_are_config_errors(tmp_path: Path, text: str,
                                                    expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_a_yaml_alias_bomb_is_refused_before_validation(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    names = ["a"] + ["b" * n for n in range(1, 9)]
    for previous, name in zip(names, names[1:], strict=False):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]")
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + f"\nnode: *{names[-1]}\n")
    with pytest.raises(ConfigError, match="expands to more than 100000 values"):
        load_config(path)


def test_the_mutator_is_repeatable(phantom_series: list[bytes]) -> None:
    from harden.mutate import mutate_dicom

    first = mutate_dicom(phantom_series[0], random.Random("x:1"))
    again = mutate_dicom(phantom_series[0], random.Random("x:1"))
    assert first == again
    assert first[0] != phantom_series[0]
