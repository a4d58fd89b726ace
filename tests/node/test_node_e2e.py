"""``segnode serve`` between DCMTK ``storescu`` and a real PACS (Orthanc), faults included.

Everything runs in one private network namespace (Orthanc 1.10 listens on
every interface): Orthanc, the node (a subprocess, stopped by PID) and the
senders. Results are checked through Orthanc's REST API and the node's
catalogue. The demo model segments the phantom series on the CPU.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from dicom_io.phantom_series import write_series
from model.phantom import Phantom, make_grid
from node.catalogue import Catalogue
from node.demo import write_station_phantom
from node.jobqueue import SqlJobQueue
from node.outbox import Outbox
from tests.peers import (
    NetNamespace,
    Orthanc,
    dcmtk_available,
    netns_available,
    orthanc_available,
    poll_until,
    stop_process,
    storescu,
)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    return netns_available() or orthanc_available() or dcmtk_available("storescu")


@dataclass(frozen=True)
class Series:
    """A phantom series on disk."""

    folder: Path
    paths: tuple[Path, ...]
    series_uid: str


#: Field of view (slice, column, row axes; mm) of the phantoms here: the abdomen, one patch
#: of the demo model (a body-sized one takes several seconds more per job on 2 cores).
ABDOMEN_FOV_MM = (192.0, 256.0, 256.0)


def write_phantom(root: Path, name: str, *,
                  fov_mm: tuple[float, float, float] | None = ABDOMEN_FOV_MM,
                  **patient: str) -> Series:
    """An axial MR phantom at 8 x 4 x 4 mm over ``fov_mm`` (None: the whole body);
    ``patient`` goes to :func:`write_series`."""
    seed = sum(map(ord, name))
    grid = make_grid("axial", (8.0, 4.0, 4.0), fov_mm=fov_mm)
    image, _ = Phantom(seed=seed, jitter=0.5).sample(grid, modality="MR")
    paths = write_series(image, root / name, modality="MR", uid_seed=f"e2e-node-{name}",
                         series_description=f"e2e {name}", **patient)
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    return Series(root / name, tuple(paths), uid)


#: Stand-ins of two shipped packs, run together by the ``two-packs`` rule.
TWO_PACKS = ("mrannotator-abdomen", "mrsegmentator-bodycomp")


def _install_standins(models: Path, archives: Path) -> None:
    from model.descriptors import descriptor
    from model.store import ModelStore
    from tests.model.standins import sha256_of, write_standin_archives

    for name in TWO_PACKS:
        item = descriptor(name)
        assert item is not None
        archive = write_standin_archives(item, archives / name) / item.archives[0].file
        ModelStore(models).install(name, from_path=archive, sha256=sha256_of(archive))


class NodeProcess:
    """``segnode serve`` in the namespace, with its configuration and catalogue."""

    def __init__(self, ns: NetNamespace, root: Path, orthanc: Orthanc,
                 overrides: dict | None = None) -> None:
        self.ns = ns
        self.root = root
        self.port = ns.free_port()
        self.config_path = root / "config.yaml"
        config = {
            "node": {"ae_title": "SEGNODE", "host": "127.0.0.1", "port": self.port},
            "callers": [{"ae_title": "STORESCU", "addresses": ["127.0.0.1"]},
                        {"ae_title": "SENDER", "addresses": ["127.0.0.0/8"]}],
            "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                              "port": orthanc.dicom_port}],
            "rules": [{"name": "two-packs",
                       "match": {"modality": ["MR"], "series_description": "two packs"},
                       "model": list(TWO_PACKS), "whole_study": False,
                       "reports": ["pdf", "sc"], "destinations": ["pacs"]},
                      {"name": "mr", "match": {"modality": ["MR"], "min_slices": 10},
                       "destinations": ["pacs"]}],
            "timing": {"series_quiet_s": 2, "study_quiet_s": 3, "poll_interval_s": 0.2,
                       "retry": {"initial_delay_s": 0.5, "max_delay_s": 2}},
            "storage": {"min_free_disk_mb": 0, "models_dir": str(root / "models")},
            "processing": {"device": "cpu", "tile_step_size": 0.75},
        }
        for section, values in (overrides or {}).items():
            config[section] = {**config.get(section, {}), **values}
        root.mkdir(parents=True, exist_ok=True)
        _install_standins(root / "models", root / "archives")
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = root / "node.log"
        self.proc: subprocess.Popen | None = None
        self.catalogue = Catalogue(f"sqlite:///{root / 'var' / 'segnode.db'}")
        self.queue = SqlJobQueue(self.catalogue)
        self.outbox = Outbox(self.catalogue, _retry())

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("a") as log:
            self.proc = self.ns.popen([sys.executable, "-m", "node.cli", "serve", "--config",
                                       str(self.config_path)], stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.ns.wait_listening([self.port], timeout=120, process=self.proc)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return self.ns.run([sys.executable, "-m", "node.cli", *args, "--config",
                            str(self.config_path)], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=120)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def _retry():
    from node.config import RetryConfig

    return RetryConfig(initial_delay_s=0.5, max_delay_s=2)


def wait_for(what: str, check: Callable[[], object], node: NodeProcess,
             timeout: float = 180.0) -> object:
    """Poll ``check`` until it returns something truthy; fail with the node's log tail."""
    value = poll_until(check, timeout, 0.2)
    if value:
        return value
    tail = "\n".join(node.log_text().splitlines()[-40:])
    pytest.fail(f"timed out waiting for {what}; node log:\n{tail}")


@dataclass
class Setup:
    ns: NetNamespace
    orthanc: Orthanc
    node: NodeProcess
    root: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("node-e2e")
    with NetNamespace() as ns:
        orthanc = Orthanc(root / "orthanc", netns=ns)
        orthanc.start()
        node = NodeProcess(ns, root / "node", orthanc)
        try:
            node.start()
            yield Setup(ns, orthanc, node, root)
        finally:
            node.stop()
            orthanc.close()


@pytest.fixture(autouse=True)
def node_running(setup: Setup) -> None:
    """Restart the node if an earlier test failed while it was killed, so failures stay local."""
    if setup.node.proc is None or setup.node.proc.poll() is not None:
        setup.node.start()


def send_phantom(setup: Setup, name: str, *,
                 fov_mm: tuple[float, float, float] | None = ABDOMEN_FOV_MM) -> Series:
    """Write a phantom series and send it to the node with storescu (one association)."""
    series = write_phantom(setup.root / "data", name, fov_mm=fov_mm)
    result = storescu(series.folder, "127.0.0.1", setup.node.port, called_aet="SEGNODE",
                      netns=setup.ns)
    assert result.returncode == 0, result.stderr
    return series


#: Files read from Orthanc, by (instance ID, FileUuid): a replaced instance has a new file.
_FILES: dict[tuple[str, str], pydicom.Dataset] = {}


def _outputs_for(orthanc: Orthanc, series_uid: str) -> dict[str, list[dict]]:
    """Orthanc's SEG and SR instances that reference ``series_uid``, by modality."""
    found: dict[str, list[dict]] = {"SEG": [], "SR": []}
    for item in orthanc.rest_get("/instances?expand"):
        key = (str(item["ID"]), str(item["FileUuid"]))
        if key not in _FILES:
            _FILES[key] = pydicom.dcmread(io.BytesIO(orthanc.instance_file(key[0])))
        raw = _FILES[key]
        if raw.get("Modality") in found and _references(raw, series_uid):
            found[str(raw.Modality)].append({"id": key[0], "dataset": raw})
    return found


def _references(ds: pydicom.Dataset, series_uid: str) -> bool:
    for item in ds.get("ReferencedSeriesSequence", []):
        if item.SeriesInstanceUID == series_uid:
            return True
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        for item in study.get("ReferencedSeriesSequence", []):
            if item.SeriesInstanceUID == series_uid:
                return True
    return False


def _one_seg_and_sr(setup: Setup, series: Series) -> Callable[[], bool]:
    def check() -> bool:
        found = _outputs_for(setup.orthanc, series.series_uid)
        return len(found["SEG"]) == 1 and len(found["SR"]) == 1
    return check


def test_storescu_series_comes_back_as_seg_and_sr_at_orthanc(setup: Setup) -> None:
    series = send_phantom(setup, "first")
    assert setup.node.catalogue.instance_count(series.series_uid) == len(series.paths)
    wait_for("SEG and SR at Orthanc", _one_seg_and_sr(setup, series), setup.node)
    found = _outputs_for(setup.orthanc, series.series_uid)
    seg = found["SEG"][0]["dataset"]
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    referenced = {item.ReferencedSOPInstanceUID
                  for frame in seg.PerFrameFunctionalGroupsSequence
                  for derivation in frame.DerivationImageSequence
                  for item in derivation.SourceImageSequence}
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
               for p in series.paths}
    assert referenced and referenced <= sources
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    sr = found["SR"][0]["dataset"]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    series_at_orthanc = setup.orthanc.series_uids()
    assert series_at_orthanc.get(series.series_uid) is None  # sources are not sent back
    jobs = [job for job in setup.node.queue.list() if job.series_uid == series.series_uid]
    assert [job.state for job in jobs] == ["done"]
    status = setup.node.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "node:      up" in status.stdout and "device:    cpu" in status.stdout
    assert re.search(r"worker 1:  cpu \d+\.\d GiB resident \(process\); idle",
                     status.stdout), status.stdout
    assert re.search(r"last job:  job \d+ .*segment \d+\.\d s \(preprocess [\d.]+ s, "
                     r"network [\d.]+ s, export [\d.]+ s", status.stdout), status.stdout
    timings = jobs and setup.node.queue.get(jobs[0].id).result["timings"]
    assert timings["segment.network"] > 0 and timings["write"] > 0
    assert timings["read"] > 0.001  # reading the series is timed, though done before the run
    listing = setup.node.cli("jobs", "list")
    assert "done     " in listing.stdout and series.series_uid in listing.stdout


def test_a_rule_with_two_packs_sends_a_seg_per_pack_and_one_sr(setup: Setup) -> None:
    # The stand-ins run at 2 mm with a 16^3 patch: a body-sized field of view takes
    # minutes per pack on 2 cores, this one seconds.
    series = send_phantom(setup, "two packs", fov_mm=(96.0, 128.0, 128.0))

    def two_segs_and_sr() -> bool:
        found = _outputs_for(setup.orthanc, series.series_uid)
        return len(found["SEG"]) == 2 and len(found["SR"]) == 1
    wait_for("two SEGs and one SR at Orthanc", two_segs_and_sr, setup.node)
    found = _outputs_for(setup.orthanc, series.series_uid)
    segs = {item["dataset"].SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
            .AlgorithmName: item["dataset"] for item in found["SEG"]}
    assert sorted(segs) == sorted(TWO_PACKS)
    sr = found["SR"][0]["dataset"]
    evidence = {sop.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for item in study.ReferencedSeriesSequence
                for sop in item.ReferencedSOPSequence}
    assert {seg.SOPInstanceUID for seg in segs.values()} <= evidence
    assert sr.SeriesDescription == "+".join(TWO_PACKS) + " volumetry"

    def reports_arrived() -> dict[str, int]:
        classes: dict[str, int] = {}
        for instance_id in setup.orthanc.instances():
            tags = setup.orthanc.instance_tags(instance_id)
            if tags.get("StudyInstanceUID") == sr.StudyInstanceUID:
                uid = str(tags.get("SOPClassUID"))
                classes[uid] = classes.get(uid, 0) + 1
        pdf, sc = "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.7"
        return classes if classes.get(pdf) == 1 and classes.get(sc) == 2 else {}
    wait_for("the PDF report and one preview per pack at Orthanc", reports_arrived, setup.node)


def test_corrupt_file_is_quarantined_and_the_next_series_is_processed(setup: Setup,
                                                                      tmp_path: Path) -> None:
    import pynetdicom

    series = write_phantom(setup.root / "data", "after-corrupt")
    raw = series.paths[0].read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(raw[:meta_end] + b"\x08\x00\x18\x00UI\xff\xff" + b"\x07" * 30)
    before = len(setup.node.catalogue.list_quarantine())
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    chunked = pynetdicom._config.STORE_SEND_CHUNKED_DATASET
    pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are
    try:
        with setup.ns.entered():
            assoc = ae.associate("127.0.0.1", setup.node.port, ae_title="SEGNODE")
        assert assoc.is_established
        assert assoc.send_c_store(corrupt).Status == 0xC210
        assoc.release()
    finally:
        pynetdicom._config.STORE_SEND_CHUNKED_DATASET = chunked
    assert len(setup.node.catalogue.list_quarantine()) == before + 1
    result = storescu(series.folder, "127.0.0.1", setup.node.port, called_aet="SEGNODE",
                      netns=setup.ns)
    assert result.returncode == 0, result.stderr
    wait_for("SEG and SR after a corrupt file", _one_seg_and_sr(setup, series), setup.node)
    assert "quarantined" in setup.node.cli("status").stdout


def test_orthanc_down_deliveries_retry_and_arrive_when_it_is_back(setup: Setup) -> None:
    series = write_phantom(setup.root / "data", "pacs-down")
    setup.orthanc.stop()
    echo = setup.node.cli("echo", "pacs")
    assert echo.returncode == 1 and "C-ECHO failed" in echo.stdout
    try:
        result = storescu(series.folder, "127.0.0.1", setup.node.port, called_aet="SEGNODE",
                          netns=setup.ns)
        assert result.returncode == 0, result.stderr

        def retried() -> bool:
            jobs = [j for j in setup.node.queue.list() if j.series_uid == series.series_uid]
            if not jobs or jobs[0].state != "done":
                return False
            rows = setup.node.outbox.for_job(jobs[0].id)
            return len(rows) == 2 and all(r.state == "pending" and r.attempts >= 2
                                          for r in rows)

        wait_for("deliveries retried while Orthanc is down", retried, setup.node)
    finally:
        setup.orthanc.start()
    wait_for("SEG and SR after Orthanc came back", _one_seg_and_sr(setup, series), setup.node)
    echo = setup.node.cli("echo", "pacs")
    assert echo.returncode == 0 and "C-ECHO succeeded" in echo.stdout


def test_sigkill_while_receiving_loses_nothing_acknowledged(setup: Setup) -> None:
    # Body-sized (68 slices), so that the kill lands while the series is still arriving.
    series = write_phantom(setup.root / "data", "kill-receiving", fov_mm=None)
    acknowledged: list[str] = []
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    with setup.ns.entered():
        assoc = ae.associate("127.0.0.1", setup.node.port, ae_title="SEGNODE")
    assert assoc.is_established

    def send() -> None:
        for path in series.paths:
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            if "Status" not in status or status.Status != 0x0000:
                return
            acknowledged.append(str(ds.SOPInstanceUID))

    sender = threading.Thread(target=send)
    sender.start()
    wait_for("some instances received",
             lambda: setup.node.catalogue.instance_count(series.series_uid) >= 8, setup.node,
             timeout=60)
    setup.node.kill()
    sender.join(timeout=60)
    assoc.abort()
    # The node records an instance before it answers, so the 8th may be stored but unanswered.
    assert 7 <= len(acknowledged) < len(series.paths)
    setup.node.start()
    stored = {p.stem for p in setup.node.catalogue.series_paths(series.series_uid)}
    assert set(acknowledged) <= stored
    for path in setup.node.catalogue.series_paths(series.series_uid):
        assert pydicom.dcmread(path).SOPInstanceUID == path.stem
    # The sender resends the whole series, as a PACS does after a failed transfer.
    result = storescu(series.folder, "127.0.0.1", setup.node.port, called_aet="SEGNODE",
                      netns=setup.ns)
    assert result.returncode == 0, result.stderr
    assert setup.node.catalogue.instance_count(series.series_uid) == len(series.paths)
    wait_for("SEG and SR after a kill while receiving", _one_seg_and_sr(setup, series),
             setup.node)


def test_sigkill_during_a_job_resumes_and_orthanc_holds_one_copy(setup: Setup) -> None:
    series = send_phantom(setup, "kill-job")

    def running() -> bool:
        return any(j.state == "running" and j.series_uid == series.series_uid
                   for j in setup.node.queue.list())

    wait_for("the job to start", running, setup.node, timeout=60)
    setup.node.kill()
    setup.node.start()
    wait_for("SEG and SR after a kill during the job", _one_seg_and_sr(setup, series),
             setup.node)
    jobs = [j for j in setup.node.queue.list() if j.series_uid == series.series_uid]
    assert len(jobs) == 1 and jobs[0].state == "done" and jobs[0].attempts == 2
    time.sleep(1.0)  # a second delivery, if any, would land within a poll interval
    found = _outputs_for(setup.orthanc, series.series_uid)
    assert len(found["SEG"]) == 1 and len(found["SR"]) == 1


def test_late_instance_reprocesses_and_replaces_the_outputs(setup: Setup) -> None:
    series = write_phantom(setup.root / "data", "late")
    all_but_last = list(series.paths[:-1])
    result = storescu(all_but_last, "127.0.0.1", setup.node.port, called_aet="SEGNODE",
                      netns=setup.ns)
    assert result.returncode == 0, result.stderr
    wait_for("first SEG and SR", _one_seg_and_sr(setup, series), setup.node)
    first = _outputs_for(setup.orthanc, series.series_uid)
    first_seg, first_sr = first["SEG"][0]["dataset"], first["SR"][0]["dataset"]
    result = storescu(series.paths[-1], "127.0.0.1", setup.node.port, called_aet="SEGNODE",
                      netns=setup.ns)
    assert result.returncode == 0, result.stderr

    def second_done() -> bool:
        jobs = [j for j in setup.node.queue.list() if j.series_uid == series.series_uid]
        return len(jobs) == 2 and all(j.state == "done" for j in jobs) and all(
            r.state == "done" for j in jobs for r in setup.node.outbox.for_job(j.id))

    wait_for("the second run to be delivered", second_done, setup.node)
    found = _outputs_for(setup.orthanc, series.series_uid)
    assert len(found["SEG"]) == 1 and len(found["SR"]) == 1  # replaced, not duplicated
    seg, sr = found["SEG"][0]["dataset"], found["SR"][0]["dataset"]
    assert seg.SOPInstanceUID == first_seg.SOPInstanceUID
    assert sr.SOPInstanceUID == first_sr.SOPInstanceUID
    last_uid = str(pydicom.dcmread(series.paths[-1], stop_before_pixels=True).SOPInstanceUID)
    assert last_uid not in _evidence(first_sr)
    assert last_uid in _evidence(sr)  # Orthanc now holds the run over the whole series


def _evidence(sr: pydicom.Dataset) -> set[str]:
    return {item.ReferencedSOPInstanceUID
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence}


def test_jobs_and_outbox_commands(setup: Setup) -> None:
    series = send_phantom(setup, "commands")
    wait_for("SEG and SR", _one_seg_and_sr(setup, series), setup.node)
    (job,) = [j for j in setup.node.queue.list() if j.series_uid == series.series_uid]
    shown = setup.node.cli("jobs", "show", str(job.id))
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["state"] == "done" and document["series_uid"] == series.series_uid
    assert sorted(d["file"] for d in document["deliveries"]) == ["seg.dcm", "sr.dcm"]
    assert {d["state"] for d in document["deliveries"]} == {"done"}
    listing = setup.node.cli("outbox", "list", "--state", "done")
    assert listing.returncode == 0 and f"job {job.id} " in listing.stdout
    neither = setup.node.cli("outbox", "retry")
    assert neither.returncode == 2 and "either a delivery ID or --all" in neither.stderr
    nothing = setup.node.cli("outbox", "retry", "--all")
    assert nothing.returncode == 0 and "0 failed deliveries queued again" in nothing.stdout
    first_delivery = max(d.delivered_at or 0 for d in setup.node.outbox.for_job(job.id))
    retried = setup.node.cli("jobs", "retry", str(job.id))
    assert retried.returncode == 0 and f"job {job.id} queued again" in retried.stdout

    def run_again() -> bool:
        again = setup.node.queue.get(job.id)
        rows = setup.node.outbox.for_job(job.id)
        return (again is not None and again.state == "done" and again.attempts == 2
                and all(r.state == "done" and (r.delivered_at or 0) > first_delivery
                        for r in rows))
    wait_for("the retried job, delivered again", run_again, setup.node)
    found = _outputs_for(setup.orthanc, series.series_uid)
    assert len(found["SEG"]) == 1 and len(found["SR"]) == 1
    unknown = setup.node.cli("jobs", "show", "99999")
    assert unknown.returncode == 2 and "No job with id 99999" in unknown.stderr


def test_whole_body_stations_in_separate_associations(setup: Setup) -> None:
    """Two stations with a gap are processed; the late middle station reruns the study.

    The rerun's SR keeps its UID (it derives from the station set), so Orthanc
    replaces it and ends up with one SEG per station and one SR.
    """
    phantom = write_station_phantom(setup.root / "data" / "wb", stations=3, overlap_mm=40.0,
                                    length_mm=560.0, spacing_mm=(8.0, 4.0, 4.0), seed=23)
    folders = [station["image"] for station in phantom.folders]
    station_uids = [str(pydicom.dcmread(next(f.iterdir()), stop_before_pixels=True)
                        .SeriesInstanceUID) for f in folders]
    for index in (2, 0):  # shuffled, one association each; the middle station is late
        result = storescu(folders[index], "127.0.0.1", setup.node.port, called_aet="SEGNODE",
                          netns=setup.ns)
        assert result.returncode == 0, result.stderr

    def delivered(indices: tuple[int, ...], jobs_done: int) -> Callable[[], bool]:
        def check() -> bool:
            jobs = [j for j in setup.node.queue.list() if set(j.series_uids) & set(station_uids)]
            if len(jobs) != jobs_done or any(j.state != "done" for j in jobs) or any(
                    r.state != "done" for j in jobs for r in setup.node.outbox.for_job(j.id)):
                return False
            found = [_outputs_for(setup.orthanc, station_uids[n]) for n in indices]
            return all(len(f["SEG"]) == 1 and len(f["SR"]) == 1 for f in found)
        return check

    wait_for("the two outer stations at Orthanc", delivered((0, 2), 1), setup.node)
    (first_job,) = [j for j in setup.node.queue.list() if set(j.series_uids) & set(station_uids)]
    assert sorted(first_job.series_uids) == sorted([station_uids[0], station_uids[2]])
    assert "gap of" in setup.node.log_text()
    first_sr = _outputs_for(setup.orthanc, station_uids[0])["SR"][0]["dataset"]
    result = storescu(folders[1], "127.0.0.1", setup.node.port, called_aet="SEGNODE",
                      netns=setup.ns)
    assert result.returncode == 0, result.stderr
    wait_for("the rerun with the late station at Orthanc", delivered((0, 1, 2), 2), setup.node)
    found = [_outputs_for(setup.orthanc, uid) for uid in station_uids]
    assert len({f["SR"][0]["id"] for f in found}) == 1  # one report for the body
    sr = found[0]["SR"][0]["dataset"]
    assert sr.SOPInstanceUID == first_sr.SOPInstanceUID  # replaced, not duplicated
    assert station_uids[1] in {series.SeriesInstanceUID
                               for study in sr.CurrentRequestedProcedureEvidenceSequence
                               for series in study.ReferencedSeriesSequence}
    second_job = max(j.id for j in setup.node.queue.list()
                     if set(j.series_uids) & set(station_uids))
    assert sorted(setup.node.queue.get(second_job).series_uids) == sorted(station_uids)
