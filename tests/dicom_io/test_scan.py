"""find_series: grouping by SeriesInstanceUID from headers only, any nesting and names."""

from __future__ import annotations

import logging

from dicom_io.scan import SeriesFiles, find_series


def test_groups_mixed_series_in_nested_folders(tmp_path, synth):
    a = synth.axial_stack("1.2.3.100", 3)
    b = synth.axial_stack("1.2.3.200", 2, modality="MR")
    synth.save_all(tmp_path, a, ["x/y/zz", "q", "x/IMG0001.DCM"])
    synth.save_all(tmp_path, b, ["x/y/deeper/0", "b.dcm"])
    found = find_series(tmp_path)
    assert [s.series_uid for s in found] == ["1.2.3.100", "1.2.3.200"]
    assert all(isinstance(s, SeriesFiles) for s in found)
    assert {p.relative_to(tmp_path).as_posix() for p in found[0].paths} == {
        "x/y/zz", "q", "x/IMG0001.DCM"}
    assert len(found[1].paths) == 2


def test_non_dicom_files_are_skipped_with_a_log_line(tmp_path, synth, caplog):
    synth.save_all(tmp_path, synth.axial_stack("1.2.3.100", 2), ["a", "b"])
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "empty").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="dicom_io.scan"):
        found = find_series(tmp_path)
    assert [len(s.paths) for s in found] == [2]
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert any("notes.txt" in m for m in skipped) and any("empty" in m for m in skipped)


def test_scanning_does_not_read_pixel_data(tmp_path, synth):
    """A file whose pixel data is cut short still groups: only headers are parsed."""
    (path,) = synth.save_all(tmp_path, synth.axial_stack("1.2.3.100", 1), ["cut"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    found = find_series(tmp_path)
    assert found == [SeriesFiles("1.2.3.100", (path,))]


def test_single_file_root(tmp_path, synth):
    (path,) = synth.save_all(tmp_path, synth.axial_stack("1.2.3.7", 1), ["one.dcm"])
    assert find_series(path) == [SeriesFiles("1.2.3.7", (path,))]
