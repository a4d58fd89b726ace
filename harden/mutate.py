"""Mutations of DICOM files and configuration text, the kinds a scanner or an admin gets wrong.

Every mutation takes the bytes of one Part 10 file (or one YAML text) and a
``random.Random`` and returns new bytes; the same generator state gives the
same output, so a campaign's input ``n`` can be rebuilt from its seed alone.

DICOM mutations are of two kinds:

- header mutations parse the file with pydicom, change attributes the
  reader and the receiver depend on (spacing, positions, orientation, Rows
  and Columns against the pixel data, NumberOfFrames, bit depth, transfer
  syntax, rescale, UIDs, descriptions, sequences) and write it back without
  validation;
- byte mutations change the encoded bytes: truncation, flipped bytes, an
  element's VR or length field overwritten (huge lengths), chunks of
  another file spliced in, and a sequence nested 1000 deep inserted before
  the pixel data.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable

import pydicom
import yaml
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

__all__ = ["DICOM_MUTATIONS", "CONFIG_MUTATIONS", "mutate_dicom", "mutate_config",
           "deep_sequence"]

Mutation = Callable[[bytes, random.Random], bytes]

#: Awkward numbers for decimal strings: not numbers at all, zero, negative, enormous.
_BAD_DS = ("nan", "NaN", "inf", "-inf", "0", "-1", "-0.0", "1e308", "1e-320", "abc", "", "1\\",
           "3.4e38", "  ")
_BAD_INTS = (0, 1, 2, 3, 7, 12, 15, 17, 64, 255, 4096, 32767, 65535)
_BAD_UIDS = ("../../../etc/passwd", "1.2." + "9" * 200, "1.2.abc.4", "1..2", ".1.2", "",
             "1.2.3\x00", "/abs/path", "1.2.3/../4", "C:\\\\win")
_VRS = (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
        b"OB", b"OD", b"OF", b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM",
        b"UI", b"UL", b"UN", b"US", b"UT", b"UC", b"UR", b"XX", b"\x00\x00")
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"OV",
             b"SV", b"UV"}
_TRANSFER_SYNTAXES = ("1.2.3.4.5", "", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90",
                      "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2",
                      "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.201")


def _parse(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True)


def _write(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    previous = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        ds.save_as(buffer, enforce_file_format=False)
    finally:
        pydicom_config.settings.writing_validation_mode = previous
    return buffer.getvalue()


def _header(change: Callable[[Dataset, random.Random], None]) -> Mutation:
    """A mutation that edits the parsed data set; files pydicom cannot parse are truncated."""
    def mutation(data: bytes, rng: random.Random) -> bytes:
        try:
            ds = _parse(data)
            change(ds, rng)
            return _write(ds)
        except Exception:  # noqa: BLE001 - an unparsable seed still gets a mutation
            return truncate(data, rng)
    mutation.__name__ = change.__name__
    return mutation


def _set(ds: Dataset, keyword: str, vr: str, value: object) -> None:
    if keyword in ds:
        ds[keyword].value = value
    else:
        ds.add_new(keyword, vr, value)


def spacing(ds: Dataset, rng: random.Random) -> None:
    """PixelSpacing, SliceThickness or SpacingBetweenSlices NaN, inf, zero or negative."""
    target = rng.choice(["PixelSpacing", "SliceThickness", "SpacingBetweenSlices"])
    bad = rng.choice(_BAD_DS)
    _set(ds, target, "DS", f"{bad}\\{rng.choice(_BAD_DS)}" if target == "PixelSpacing" else bad)
    for item in _functional_items(ds, "PixelMeasuresSequence"):
        item.PixelSpacing = f"{bad}\\{bad}"
        item.SliceThickness = rng.choice(_BAD_DS)


def geometry(ds: Dataset, rng: random.Random) -> None:
    """ImagePositionPatient or ImageOrientationPatient broken (NaN, zero, parallel, short)."""
    count = rng.choice((2, 3, 4))
    position = "\\".join(rng.choice(_BAD_DS + ("0", "10", "-5")) for _ in range(count))
    orientation = rng.choice(["0\\0\\0\\0\\0\\0", "1\\0\\0\\1\\0\\0", "nan\\0\\0\\0\\1\\0",
                              "1\\0\\0\\0\\1", "1e308\\0\\0\\0\\1e308\\0", "inf\\inf\\0\\0\\0\\0"])
    if rng.random() < 0.5:
        _set(ds, "ImagePositionPatient", "DS", position)
    else:
        _set(ds, "ImageOrientationPatient", "DS", orientation)
    for item in _functional_items(ds, "PlanePositionSequence"):
        item.ImagePositionPatient = position
    for item in _functional_items(ds, "PlaneOrientationSequence"):
        item.ImageOrientationPatient = orientation


def matrix(ds: Dataset, rng: random.Random) -> None:
    """Rows or Columns that do not match the length of the pixel data."""
    keyword = rng.choice(["Rows", "Columns"])
    _set(ds, keyword, "US", rng.choice(_BAD_INTS))


def frames(ds: Dataset, rng: random.Random) -> None:
    """NumberOfFrames absurd: zero, negative, one million, not a number."""
    _set(ds, "NumberOfFrames", "IS", rng.choice(["0", "-1", "1000000", "abc", "2", "99999999999"]))


def bits(ds: Dataset, rng: random.Random) -> None:
    """BitsAllocated, BitsStored, PixelRepresentation or SamplesPerPixel out of range."""
    keyword = rng.choice(["BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                          "SamplesPerPixel", "PlanarConfiguration"])
    _set(ds, keyword, "US", rng.choice(_BAD_INTS))


def transfer_syntax(ds: Dataset, rng: random.Random) -> None:
    """A bogus or mismatched TransferSyntaxUID in the file meta."""
    ds.file_meta.TransferSyntaxUID = rng.choice(_TRANSFER_SYNTAXES)


def rescale(ds: Dataset, rng: random.Random) -> None:
    """RescaleSlope or RescaleIntercept NaN, inf, zero or enormous."""
    _set(ds, rng.choice(["RescaleSlope", "RescaleIntercept"]), "DS", rng.choice(_BAD_DS))


def uids(ds: Dataset, rng: random.Random) -> None:
    """Study, series or instance UID with path parts, 200 digits or letters."""
    keyword = rng.choice(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                          "SOPClassUID", "FrameOfReferenceUID"])
    _set(ds, keyword, "UI", rng.choice(_BAD_UIDS))


def text(ds: Dataset, rng: random.Random) -> None:
    """SeriesDescription or ImageType with control characters, markup or 64 KB of text."""
    keyword = rng.choice(["SeriesDescription", "ImageType", "BodyPartExamined", "Modality",
                          "Manufacturer", "PatientName"])
    value = rng.choice(["\x1b[31mred\x1b[0m", "line\r\nfake log line", "nul\x00byte",
                        "<script>alert(1)</script>", "A" * 65536, "\\".join(["X"] * 5000),
                        "\udcff".encode("utf-8", "surrogatepass").decode("latin-1")])
    _set(ds, keyword, "LO", value)


def delete(ds: Dataset, rng: random.Random) -> None:
    """A random top-level element removed (Rows, positions, pixel data, UIDs, ...)."""
    keywords = [e.keyword for e in ds if e.keyword]
    if keywords:
        del ds[rng.choice(keywords)]


def functional_groups(ds: Dataset, rng: random.Random) -> None:
    """Per-frame functional groups with items removed, emptied or repeated."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset() for _ in range(3)])
        return
    choice = rng.random()
    if choice < 0.3:
        del per_frame[rng.randrange(len(per_frame))]
    elif choice < 0.6:
        per_frame[rng.randrange(len(per_frame))] = Dataset()
    else:
        per_frame.extend(per_frame[: rng.randint(1, len(per_frame))])


def _functional_items(ds: Dataset, keyword: str) -> list[Dataset]:
    items: list[Dataset] = []
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for frame in ds.get(group, []):
            items.extend(frame.get(keyword, []))
    return items


# Byte mutations ----------------------------------------------------------------------------

def truncate(data: bytes, rng: random.Random) -> bytes:
    """The file cut at a random offset (a transfer that stopped)."""
    return data[: rng.randrange(max(len(data), 1))]


def flip(data: bytes, rng: random.Random) -> bytes:
    """Up to 32 random bytes replaced."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 32)):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _element_offsets(data: bytes) -> list[int]:
    """Offsets of plausible explicit-VR element headers (two upper-case letters after a tag)."""
    offsets = []
    for offset in range(132, max(len(data) - 8, 132)):
        if 65 <= data[offset + 4] <= 90 and 65 <= data[offset + 5] <= 90:
            offsets.append(offset)
        if len(offsets) > 4000:
            break
    return offsets


def wrong_vr(data: bytes, rng: random.Random) -> bytes:
    """An element's VR bytes overwritten with another VR (or none)."""
    offsets = _element_offsets(data)
    if not offsets:
        return flip(data, rng)
    offset = rng.choice(offsets)
    return data[: offset + 4] + rng.choice(_VRS) + data[offset + 6:]


def huge_length(data: bytes, rng: random.Random) -> bytes:
    """An element's length field set to a huge (or odd, or undefined) value."""
    offsets = _element_offsets(data)
    if not offsets:
        return flip(data, rng)
    offset = rng.choice(offsets)
    length = rng.choice([0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 0x10000000, 1, 3, 0xFFFF])
    if data[offset + 4: offset + 6] in _LONG_VRS:
        return data[: offset + 8] + struct.pack("<I", length) + data[offset + 12:]
    return data[: offset + 6] + struct.pack("<H", length & 0xFFFF) + data[offset + 8:]


def splice(data: bytes, rng: random.Random) -> bytes:
    """A chunk of the file repeated or moved elsewhere in it."""
    if len(data) < 8:
        return data * 2
    start = rng.randrange(len(data))
    chunk = data[start: start + rng.randint(1, 4096)]
    at = rng.randrange(len(data))
    return data[:at] + chunk + data[at + rng.randint(0, len(chunk)):]


def deep_sequence(depth: int = 1000) -> bytes:
    """An explicit-VR little-endian private sequence nested ``depth`` deep (undefined lengths)."""
    open_level = struct.pack("<HH", 0x0029, 0x1010) + b"SQ\x00\x00" + b"\xff\xff\xff\xff" \
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close_level = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    creator = struct.pack("<HH", 0x0029, 0x0010) + b"LO" + struct.pack("<H", 6) + b"FUZZ  "
    return creator + open_level * depth + close_level * depth


def nested(data: bytes, rng: random.Random) -> bytes:
    """A sequence nested 1000 deep inserted before the pixel data (or at the end)."""
    marker = data.find(b"\xe0\x7f\x10\x00")
    at = marker if marker > 132 else len(data)
    return data[:at] + deep_sequence(rng.choice((100, 1000, 5000))) + data[at:]


DICOM_MUTATIONS: dict[str, Mutation] = {
    "spacing": _header(spacing), "geometry": _header(geometry), "matrix": _header(matrix),
    "frames": _header(frames), "bits": _header(bits),
    "transfer_syntax": _header(transfer_syntax), "rescale": _header(rescale),
    "uids": _header(uids), "text": _header(text), "delete": _header(delete),
    "functional_groups": _header(functional_groups),
    "truncate": truncate, "flip": flip, "wrong_vr": wrong_vr, "huge_length": huge_length,
    "splice": splice, "nested": nested,
}


def mutate_dicom(data: bytes, rng: random.Random, *, rounds: int | None = None
                 ) -> tuple[bytes, list[str]]:
    """Apply one to three random DICOM mutations; returns the bytes and the mutations' names."""
    names = []
    for _ in range(rounds or rng.choice((1, 1, 1, 2, 3))):
        name = rng.choice(sorted(DICOM_MUTATIONS))
        data = DICOM_MUTATIONS[name](data, rng)
        names.append(name)
    return data, names


# Configuration mutations -------------------------------------------------------------------

_BAD_VALUES: tuple[object, ...] = (
    -1, 0, 1e309, float("nan"), "", "x" * 10000, [], {}, None, True, "../../etc/passwd",
    "${UNDEFINED_VARIABLE}", 2**70, "0.0.0.0", "SEGNODE_AE_TITLE_TOO_LONG", "ümlaut", [1, [2]],
    {"nested": {"deeper": 1}}, "1e3", "auto", "cuda:99",
)


def _paths(document: object, limit: int = 10000) -> list[tuple]:
    """Key paths of the parsed document (at most ``limit``: aliases can expand without end)."""
    found: list[tuple] = []
    pending: list[tuple[object, tuple]] = [(document, ())]
    while pending and len(found) < limit:
        node, prefix = pending.pop()
        if prefix:
            found.append(prefix)
        if isinstance(node, dict):
            pending.extend((value, (*prefix, key)) for key, value in node.items())
        elif isinstance(node, list):
            pending.extend((value, (*prefix, n)) for n, value in enumerate(node))
    return found


def _structural(text: str, rng: random.Random) -> str:
    """A value replaced, a key added or removed, somewhere in the parsed document."""
    document = yaml.safe_load(text)
    paths = _paths(document)
    if not paths:
        return text + "\nunknown_key: 1\n"
    path = rng.choice(paths)
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    action = rng.random()
    if action < 0.6:
        parent[path[-1]] = rng.choice(_BAD_VALUES)
    elif action < 0.8 and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[f"{path[-1]}_typo"] = 1
    return yaml.safe_dump(document, allow_unicode=True)


def _billion_laughs(text: str, rng: random.Random) -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, rng.choice((5, 9))):
        lines.append(f"{'b' * n}: &{'b' * n} [" + ", ".join([f"*{'b' * (n - 1) or 'a'}"] * 10)
                     + "]")
    return "\n".join(lines) + "\nnode: *" + "b" * (len(lines) - 1) + "\n" + text


def _deep_nesting(text: str, rng: random.Random) -> str:
    depth = rng.choice((100, 1000, 10000))
    return "rules: " + "[" * depth + "]" * depth + "\n" + text


def _text_flip(text: str, rng: random.Random) -> str:
    return flip(text.encode(), rng).decode("utf-8", "replace")


def _text_truncate(text: str, rng: random.Random) -> str:
    return text[: rng.randrange(max(len(text), 1))]


CONFIG_MUTATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "structural": _structural, "billion_laughs": _billion_laughs,
    "deep_nesting": _deep_nesting, "flip": _text_flip, "truncate": _text_truncate,
}


def mutate_config(text: str, rng: random.Random) -> tuple[str, list[str]]:
    """Apply one or two configuration mutations; returns the text and the mutations' names."""
    names = []
    for _ in range(rng.choice((1, 1, 2))):
        name = rng.choice(sorted(CONFIG_MUTATIONS))
        try:
            text = CONFIG_MUTATIONS[name](text, rng)
        except (yaml.YAMLError, RecursionError):  # not YAML (any more): flip bytes instead
            text = _text_flip(text, rng)
        names.append(name)
    return text, names
