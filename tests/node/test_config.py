"""``config.yaml``: the shipped file, every key documented, errors with their key path."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from node.config import (
    CallerConfig,
    DestinationConfig,
    DestinationTLS,
    ListenerConfig,
    ListenerTLS,
    NodeConfig,
    ProcessingConfig,
    RetryConfig,
    RuleConfig,
    RuleMatch,
    StorageConfig,
    TimingConfig,
    load_config,
)
from segnode_errors import ConfigError
from tests.node.conftest import REPO

SHIPPED = REPO / "config.yaml"

Raw = dict[str, Any]


def shipped_raw() -> Raw:
    """The shipped configuration as plain data, to be altered by a test."""
    return yaml.safe_load(SHIPPED.read_text())


def write_config(folder: Path, raw: Raw) -> Path:
    """Write ``raw`` as ``folder/config.yaml``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def problems(tmp_path: Path, raw: Raw) -> list[str]:
    """The problem lines of the error that ``raw`` raises (the header line removed)."""
    path = write_config(tmp_path, raw)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    header, *lines = str(caught.value).splitlines()
    assert str(path) in header
    return lines


# The shipped file ------------------------------------------------------------------------


def test_shipped_config_loads_with_paths_beside_the_file(tmp_path: Path) -> None:
    """Relative storage paths resolve against the config file's folder, not the cwd."""
    folder = tmp_path / "etc"
    folder.mkdir()
    config = load_config(shutil.copy(SHIPPED, folder / "config.yaml"))
    assert config.storage.spool_dir == folder / "var" / "spool"
    assert config.storage.quarantine_dir == folder / "var" / "quarantine"
    assert config.storage.output_dir == folder / "var" / "outputs"
    assert config.storage.models_dir == Path.home() / ".local" / "share" / "segnode" / "models"
    assert config.database_url == f"sqlite:///{folder / 'var' / 'segnode.db'}"
    assert [c.ae_title for c in config.callers] == ["STORESCU", "ORTHANC"]
    assert config.destination("pacs").tls is None
    assert [(r.name, r.destinations, r.match.min_slices) for r in config.rules] == [
        ("body-mr-ct", ("pacs",), 20)]


def test_shipped_sections_hold_the_defaults() -> None:
    """The file says every key is listed with its default value."""
    config = load_config(SHIPPED)
    defaults = NodeConfig()
    assert config.node == defaults.node
    assert config.timing == defaults.timing
    assert config.processing == defaults.processing
    assert config.stations == defaults.stations
    assert config.storage.min_free_disk_mb == defaults.storage.min_free_disk_mb
    assert config.storage.retention_days == defaults.storage.retention_days


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models_in(arg)


def _all_keys(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[tuple[str, str]]:
    """(model name, key) for every field of ``model`` and the models nested in it."""
    seen.add(model)
    keys = []
    for name, field in model.model_fields.items():
        keys.append((model.__name__, name))
        for sub in _models_in(field.annotation):
            if sub not in seen:
                keys.extend(_all_keys(sub, seen))
    return keys


def test_every_key_of_the_model_is_documented_in_the_shipped_file() -> None:
    seen: set[type[BaseModel]] = set()
    keys = _all_keys(NodeConfig, seen)
    assert seen >= {ListenerConfig, ListenerTLS, CallerConfig, DestinationConfig,
                    DestinationTLS, RuleConfig, RuleMatch, TimingConfig, RetryConfig,
                    StorageConfig, ProcessingConfig}
    text = SHIPPED.read_text()
    undocumented = [f"{model}.{key}" for model, key in keys
                    if not re.search(rf"(^|[\s{{,#]){re.escape(key)}:", text, re.MULTILINE)]
    assert undocumented == []


# Wrong keys and values ------------------------------------------------------------------


def _set(*path: str | int, value: Any) -> Callable[[Raw], None]:
    def change(raw: Raw) -> None:
        target = raw
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return change


def _duplicate_destination(raw: Raw) -> None:
    raw["destinations"].append(dict(raw["destinations"][0]))


BAD_VALUES = {
    "port out of range": (_set("node", "port", value=99999), "node.port", "65535"),
    "unknown key": (_set("node", "foo", value=1), "node.foo", "Extra inputs"),
    "AE title of 17 characters": (_set("node", "ae_title", value="A" * 17), "node.ae_title",
                                  "16 characters"),
    "AE title with a backslash": (_set("node", "ae_title", value="SEG\\NODE"), "node.ae_title",
                                  "backslash"),
    "blank AE title": (_set("node", "ae_title", value="  "), "node.ae_title", "AE title"),
    "bad CIDR": (_set("callers", 0, "addresses", value=["10.0.0.0/33"]),
                 "callers.0.addresses", "10.0.0.0/33"),
    "bad regex": (_set("rules", 0, "match", "series_description", value="t1(vibe"),
                  "rules.0.match.series_description", "regular expression"),
    "unknown destination": (_set("rules", 0, "destinations", value=["pacs", "nowhere"]),
                            "rules.0.destinations", "nowhere"),
    "duplicate destination": (_duplicate_destination, "destinations", "duplicate name(s) pacs"),
    "device gpu": (_set("processing", "device", value="gpu"), "processing.device", "'gpu'"),
    "device list with tpu": (_set("processing", "device", value=["cpu", "tpu"]),
                             "processing.device", "'tpu'"),
    "celery without a broker": (_set("queue", "backend", value="celery"), "queue.broker_url",
                                "required when queue.backend is celery"),
    "database URL of another engine": (_set("database", "url", value="mysql://db/segnode"),
                                       "database.url", "postgresql://"),
    "empty device list": (_set("processing", "device", value=[]), "processing.device",
                          "at least one device"),
    "auto in a device list": (_set("processing", "device", value=["auto", "cuda:1"]),
                              "processing.device", "auto stands alone"),
    "pack named twice": (_set("rules", 0, "model", value=["mrsegmentator", "mrsegmentator"]),
                         "rules.0.model", "more than once: mrsegmentator"),
    "blank pack name": (_set("rules", 0, "model", value=["mrsegmentator", " "]),
                        "rules.0.model", "non-empty"),
}


def test_a_rule_names_one_pack_or_several(tmp_path: Path) -> None:
    raw = shipped_raw()
    raw["rules"][0]["model"] = "mrsegmentator"
    assert load_config(write_config(tmp_path, raw)).rules[0].model == ("mrsegmentator",)
    raw["rules"][0]["model"] = ["mrsegmentator", "mrsegmentator-bodycomp"]
    assert load_config(write_config(tmp_path, raw)).rules[0].model == (
        "mrsegmentator", "mrsegmentator-bodycomp")
    raw["rules"][0]["model"] = None
    assert load_config(write_config(tmp_path, raw)).rules[0].model == ()


def test_device_is_one_or_a_list_of_one_per_worker(tmp_path: Path) -> None:
    raw = shipped_raw()
    raw["processing"]["device"] = ["cuda:0", "cuda:1"]
    assert load_config(write_config(tmp_path, raw)).processing.device == ("cuda:0", "cuda:1")
    raw["processing"]["device"] = "cpu"
    assert load_config(write_config(tmp_path, raw)).processing.device == "cpu"


@pytest.mark.parametrize("change, key_path, detail", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_a_wrong_value_is_reported_with_its_key_path(
    tmp_path: Path, change: Callable[[Raw], None], key_path: str, detail: str,
) -> None:
    raw = shipped_raw()
    change(raw)
    lines = problems(tmp_path, raw)
    assert len(lines) == 1, lines
    assert f"{key_path}:" in lines[0] and detail in lines[0], lines[0]


def test_several_problems_give_one_line_each(tmp_path: Path) -> None:
    raw = shipped_raw()
    raw["node"]["port"] = 0
    raw["processing"]["device"] = "gpu"
    raw["callers"][1]["addresses"] = ["127.0.0.0/8", "localhost"]
    raw["timing"]["retry"]["backoff_factor"] = 0.5
    lines = problems(tmp_path, raw)
    assert sorted(line.split(":")[0] for line in lines) == [
        "callers.1.addresses", "node.port", "processing.device", "timing.retry.backoff_factor"]


def test_several_reference_problems_give_one_line_each(tmp_path: Path) -> None:
    """A duplicate destination does not hide a rule that names an unknown one."""
    raw = shipped_raw()
    _duplicate_destination(raw)
    raw["rules"][0]["destinations"] = ["nowhere"]
    lines = problems(tmp_path, raw)
    assert len(lines) == 2, lines
    assert any("destinations" in line and "duplicate" in line for line in lines)
    assert any("rules.0.destinations:" in line and "nowhere" in line for line in lines)


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("node:\n  port: [11112\n")
    with pytest.raises(ConfigError, match="is not valid YAML") as caught:
        load_config(path)
    assert f"'{path}'" in str(caught.value)


def test_a_list_instead_of_sections_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("- node\n- rules\n")
    with pytest.raises(ConfigError, match="must hold a mapping") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


# Callers and destinations ----------------------------------------------------------------


def test_caller_allows_listed_addresses_and_ranges() -> None:
    caller = CallerConfig(ae_title="PACS",
                          addresses=("10.0.0.5", "192.168.1.7/24", "2001:db8::/32"))
    assert caller.allows("10.0.0.5")
    assert not caller.allows("10.0.0.6")
    assert caller.allows("192.168.1.200")  # host bits in a range are tolerated
    assert not caller.allows("192.168.2.1")
    assert caller.allows("2001:db8::17")
    assert not caller.allows("2001:db9::1")
    assert not caller.allows("not-an-address")


def test_caller_without_addresses_allows_any() -> None:
    caller = CallerConfig(ae_title="PACS")
    assert caller.allows("10.1.2.3") and caller.allows("::1")


def test_destination_tls_switch() -> None:
    base = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
    on = DestinationConfig(**base, tls=True)
    assert on.tls == DestinationTLS()
    assert on.tls.ca_certificates is None and on.tls.server_hostname is None
    assert DestinationConfig(**base, tls=False).tls is None
    assert DestinationConfig(**base).tls is None


def test_relative_tls_paths_resolve_beside_the_file(tmp_path: Path) -> None:
    raw = shipped_raw()
    raw["node"]["tls"] = {"port": 2762, "certificate": "tls/server.pem",
                          "private_key": "/etc/segnode/server.key"}
    raw["destinations"][0]["tls"] = {"ca_certificates": "tls/ca.pem",
                                     "server_hostname": "pacs.example.org"}
    config = load_config(write_config(tmp_path, raw))
    assert config.node.tls is not None
    assert config.node.tls.certificate == tmp_path / "tls" / "server.pem"
    assert config.node.tls.private_key == Path("/etc/segnode/server.key")
    dest_tls = config.destination("pacs").tls
    assert dest_tls is not None and dest_tls.ca_certificates == tmp_path / "tls" / "ca.pem"
    assert dest_tls.server_hostname == "pacs.example.org"
