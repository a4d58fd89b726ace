"""Several workers in one node: one per device, each job claimed once, jobs side by side."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import socket
from pathlib import Path

import pydicom
import pytest
import yaml

from node.config import load_config
from node.node_commands import status
from node.receiver import Receiver
from node.service import Node
from tests.node.conftest import _write_case
from tests.peers import poll_until


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(root: Path) -> Path:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({
        "node": {"ae_title": "SEGNODE", "host": "127.0.0.1", "port": _free_port()},
        "rules": [{"name": "mr", "match": {"modality": ["MR"]}, "whole_study": False}],
        "timing": {"series_quiet_s": 0.5, "poll_interval_s": 0.2},
        "storage": {"spool_dir": str(root / "spool"), "output_dir": str(root / "out"),
                    "quarantine_dir": str(root / "quarantine"),
                    "models_dir": str(root / "models"), "min_free_disk_mb": 0},
        "database": {"url": f"sqlite:///{root / 'segnode.db'}"},
        "processing": {"device": ["cpu", "cpu"], "tile_step_size": 1.0},
        "web": {"enabled": False},
    }))
    return path


def _receive(node: Node, folder: Path) -> None:
    receiver = Receiver(node.spool, node.quarantine, node.catalogue,
                        node.config.timing.reprocess_late_instances)
    for path in sorted(folder.glob("*.dcm")):
        data = path.read_bytes()
        receiver.receive(data, lambda data=data: pydicom.dcmread(io.BytesIO(data)), "STORESCU")


def _status_lines(config_path: Path) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status(argparse.Namespace(config=str(config_path)))
    return out.getvalue().splitlines()


@pytest.mark.timeout(300)
def test_two_cpu_workers_run_two_jobs_side_by_side(tmp_path: Path) -> None:
    config_path = _config(tmp_path)
    node = Node(load_config(config_path))
    assert [(w.name, w.device) for w in node.workers] == [("1", "cpu"), ("2", "cpu")]
    share = max(1, len(os.sched_getaffinity(0)) // 2)  # the process's cores, shared out
    assert [w.cpu_threads for w in node.workers] == [share, share]
    settings = node.workers[0].settings_for((), "binary")
    assert settings.max_volume_megavoxels == node.config.limits.max_volume_megavoxels == 500
    for index, name in enumerate(("coronal", "oblique")):  # complete before the loops start
        _receive(node, _write_case(tmp_path, name, index).folder)
    node.start()
    try:
        assert all(w.model_loaded for w in node.workers)  # one warm model each, at start
        assert node.readiness()["model_loaded"]

        def both_running() -> bool:
            return all(w.current_job is not None for w in node.workers)

        assert poll_until(both_running, timeout=60, interval=0.02), node.queue.counts()

        def status_shows_both() -> list[str]:  # the heartbeat writes it every poll interval
            lines = [line for line in _status_lines(config_path) if line.startswith("worker ")]
            return lines if sum("running job" in line for line in lines) == 2 else []

        running = poll_until(status_shows_both, timeout=5, interval=0.05)
        assert [line.split(":")[0] for line in running] == ["worker 1", "worker 2"], running
        assert all(re.search(r":  cpu \d+\.\d GiB resident \(process\); running job \d", line)
                   for line in running), running
        gauges = node.metrics.render().decode()
        assert 'segnode_worker_busy{device="cpu",worker="1"} 1.0' in gauges
        assert 'segnode_worker_busy{device="cpu",worker="2"} 1.0' in gauges
        assert gauges.count("segnode_device_memory_used_bytes{") == 1  # one CPU, counted once

        def finished() -> bool:
            return node.queue.counts()["done"] + node.queue.counts()["failed"] == 2

        assert poll_until(finished, timeout=240, interval=0.2), node.queue.counts()
    finally:
        node.stop(timeout_s=30)
    jobs = node.queue.list()
    assert [j.state for j in jobs] == ["done", "done"], [j.reason for j in jobs]
    assert sorted(j.attempts for j in jobs) == [1, 1]  # each claimed once
    assert {j.result["worker"] for j in jobs} == {"1", "2"}
    first, second = sorted(jobs, key=lambda j: j.started_at or 0)
    assert second.started_at < first.finished_at  # the second began before the first ended
    for job in jobs:
        outputs = [Path(path) for path in job.result["outputs"]]
        assert any(path.name.startswith("seg") for path in outputs), outputs
        assert all(pydicom.dcmread(path).SOPInstanceUID for path in outputs)
