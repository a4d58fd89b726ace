"""Log output: JSON lines carry the event and its ids, never the patient."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from node.logs import JsonFormatter, apply_logging
from tests.node.conftest import REPO


def test_json_event_has_time_level_message_and_job_id() -> None:
    record = logging.LogRecord("node.worker", logging.INFO, __file__, 1, "job %d done", (7,),
                               None)
    record.job_id = 7
    event = json.loads(JsonFormatter().format(record))
    assert event["message"] == "job 7 done" and event["job_id"] == 7
    assert event["level"] == "INFO" and event["logger"] == "node.worker"
    assert event["time"].endswith("+00:00")


def test_apply_logging_switches_every_root_handler() -> None:
    script = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout)\n"
        "from node.logs import apply_logging\n"
        "apply_logging('json', 'WARNING')\n"
        "logging.getLogger('x').info('hidden')\n"
        "logging.getLogger('x').warning('shown %s', 1, extra={'association_id': 3})\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.splitlines()
    assert len(out) == 1
    event = json.loads(out[0])
    assert event["message"] == "shown 1" and event["association_id"] == 3
    assert apply_logging.__doc__
