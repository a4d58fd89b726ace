"""The node's configuration (``config.yaml``): one validated pydantic model.

Loaded once by the entry point (``segnode serve``, ``segnode config check``
and the other node commands) and passed explicitly. Every key is documented
in the shipped ``config.yaml``. Unknown keys and wrong values are refused with
their key path, e.g. ``destinations.0.port: Input should be less than or equal
to 65535``.

Relative paths in ``storage`` and ``tls`` are resolved against the folder of
the configuration file, so the shipped ``config.yaml`` works from any
working directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pynetdicom._validators import validate_ae

from node.settings import (
    DEFAULT_DISCLAIMER,
    StationSettings,
    check_device,
    default_models_dir,
    format_validation_error,
    pack_names,
)
from segnode_errors import ConfigError

__all__ = [
    "NodeConfig",
    "ListenerConfig",
    "ListenerTLS",
    "CallerConfig",
    "DestinationConfig",
    "DestinationTLS",
    "RuleConfig",
    "RuleMatch",
    "TimingConfig",
    "RetryConfig",
    "StorageConfig",
    "ProcessingConfig",
    "WebConfig",
    "LoggingConfig",
    "ReportsConfig",
    "load_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ae_title(value: str) -> str:
    if not value.strip():
        raise ValueError("invalid AE title: must not be empty or only spaces")
    ok, reason = validate_ae(value)
    if not ok:
        raise ValueError(f"invalid AE title {value!r}: {reason}")
    return value


def _listen_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"must be an IP address to listen on, got {value!r}") from None
    return value


class ListenerTLS(_Strict):
    """DICOM TLS on a second port (PS3.15 B.1: ``2762`` by convention)."""

    port: int = Field(ge=1, le=65535)
    certificate: Path
    private_key: Path
    #: CA bundle; when given, callers must present a certificate signed by it.
    ca_certificates: Path | None = None


class ListenerConfig(_Strict):
    """The node's own DICOM identity and listening sockets."""

    ae_title: str = "SEGNODE"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=1, le=65535)
    tls: ListenerTLS | None = None
    max_pdu_bytes: int = Field(default=262144, ge=0)
    max_associations: int = Field(default=10, ge=1, le=1000)
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=120.0, gt=0)
    #: Rejections (and connections closed unused) are logged once per interval per
    #: (reason, calling AE, address), with a count of those held back.
    rejection_log_interval_s: float = Field(default=60.0, gt=0)

    _check_ae = field_validator("ae_title")(_ae_title)

    _check_host = field_validator("host")(_listen_address)


class CallerConfig(_Strict):
    """One peer allowed to send: a calling AE title and where it may come from."""

    ae_title: str
    #: IP addresses or CIDR ranges; empty means any address.
    addresses: tuple[str, ...] = ()

    _check_ae = field_validator("ae_title")(_ae_title)

    @field_validator("addresses")
    @classmethod
    def _check_addresses(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or CIDR range: {value!r}") from None
        return values

    def allows(self, address: str) -> bool:
        """True when ``address`` is inside one of this caller's ranges (or none are set)."""
        if not self.addresses:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.addresses)


class DestinationTLS(_Strict):
    """TLS towards a destination; without ``ca_certificates`` the system CAs verify it."""

    ca_certificates: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    server_hostname: str | None = None


class DestinationConfig(_Strict):
    """A DICOM peer that receives segnode's results (C-STORE SCP)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: DestinationTLS | None = None

    _check_ae = field_validator("ae_title")(_ae_title)

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_switch(cls, value: Any) -> Any:
        """``tls: true`` means TLS with the system CAs, ``false`` means none."""
        if value is True:
            return {}
        if value is False:
            return None
        return value


class RuleMatch(_Strict):
    """Conditions on a series; all given conditions must hold."""

    modality: tuple[str, ...] = ()
    series_description: str | None = None
    body_part_examined: tuple[str, ...] = ()
    image_type: tuple[str, ...] = ()
    min_slices: int = Field(default=1, ge=1)

    @field_validator("series_description")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class RuleConfig(_Strict):
    """Which series to process, with which model, and who gets the results."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    match: RuleMatch = Field(default_factory=RuleMatch)
    #: Model pack name or folder, or a list of them (one SEG per pack, one SR for
    #: all); ``null`` is the built-in demo model.
    model: tuple[str, ...] = ()
    seg_type: Literal["binary", "labelmap"] = "binary"
    destinations: tuple[str, ...] = ()
    #: Wait for the whole study (timing.study_quiet_s) and process the series this
    #: rule takes together, so that the stations of a whole-body scan are stitched.
    whole_study: bool = True
    #: Extra results every viewer can show, sent with the SEG and SR as their own
    #: series: ``pdf`` (encapsulated PDF report), ``sc`` (secondary capture preview).
    reports: tuple[Literal["pdf", "sc"], ...] = ()
    #: Which jobs run first when workers are busy: urgent, normal, then batch (backfills).
    priority: Literal["urgent", "normal", "batch"] = "normal"

    _check_model = field_validator("model", mode="before")(lambda v: pack_names(v))


class RetryConfig(_Strict):
    """Exponential backoff for transient send failures."""

    initial_delay_s: float = Field(default=10.0, gt=0)
    backoff_factor: float = Field(default=2.0, ge=1.0)
    max_delay_s: float = Field(default=600.0, gt=0)
    #: A delivery still failing this long after it was created is given up.
    max_age_s: float = Field(default=86400.0, gt=0)


class TimingConfig(_Strict):
    """When a series counts as complete, and how sending is retried."""

    series_quiet_s: float = Field(default=30.0, gt=0)
    #: A study is complete when nothing of it arrived for this long (rules with whole_study).
    study_quiet_s: float = Field(default=120.0, gt=0)
    reprocess_late_instances: bool = True
    retry: RetryConfig = Field(default_factory=RetryConfig)
    #: How often the node's loops look for work.
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)

    @property
    def heartbeat_fresh_s(self) -> float:
        """A heartbeat older than this means its process is gone (5 rounds, at least 10 s)."""
        return max(10.0, 5 * self.poll_interval_s)


class StorageConfig(_Strict):
    """Where the node keeps what it receives, produces and knows."""

    spool_dir: Path = Path("var/spool")
    quarantine_dir: Path = Path("var/quarantine")
    output_dir: Path = Path("var/outputs")
    #: Radiologists' corrections: the corrected label maps and the images the model saw.
    corrections_dir: Path = Path("var/corrections")
    models_dir: Path = Field(default_factory=default_models_dir)
    min_free_disk_mb: int = Field(default=1024, ge=0)
    #: Days to keep a series' spool files and outputs after all deliveries succeeded.
    retention_days: float = Field(default=7.0, ge=0)


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _from_environment(value: Any) -> Any:
    """``${NAME}`` in a secret-bearing value, replaced from the environment."""
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]

    return _ENV_REFERENCE.sub(lookup, value)


_DATABASE_URL = re.compile(r"^(sqlite:///.+|postgresql(\+psycopg)?://.+)$")


class DatabaseConfig(_Strict):
    """The catalogue: SQLite for one process, PostgreSQL when processes or servers share it."""

    #: ``sqlite:///PATH`` or ``postgresql://user:password@host:port/db``; null is SQLite at
    #: ``var/segnode.db``.
    url: str | None = None

    _expand = field_validator("url", mode="before")(_from_environment)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not _DATABASE_URL.match(value):
            raise ValueError("must be sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
        return value


class QueueConfig(_Strict):
    """How jobs reach workers: the catalogue itself, or Celery over Redis or RabbitMQ."""

    #: ``embedded``: workers claim from the catalogue's jobs table (one process, or several
    #: sharing PostgreSQL); ``celery``: each job is also a Celery task on ``broker_url``.
    backend: Literal["embedded", "celery"] = "embedded"
    #: ``redis://host:6379/0`` or ``amqp://user:password@host:5672//`` (backend celery).
    broker_url: str | None = None
    #: A running job's lease: its worker renews it every third of this; a job whose lease
    #: ran out (its worker died) is queued again for another worker.
    lease_s: float = Field(default=60.0, ge=5, le=3600)
    #: A queued job not taken by any worker this long after it was published is
    #: published again (a broker restarted without its messages loses nothing).
    republish_after_s: float = Field(default=300.0, ge=5)

    _expand = field_validator("broker_url", mode="before")(_from_environment)

    @model_validator(mode="after")
    def _broker_for_celery(self) -> QueueConfig:
        if self.backend == "celery":
            if not self.broker_url:
                raise ValueError("queue.broker_url: required when queue.backend is celery")
            if not re.match(r"^(redis|rediss|amqp|amqps)://", self.broker_url):
                raise ValueError(f"queue.broker_url: {self.broker_url.split('@')[-1]!r} is not a "
                                 "redis:// or amqp:// URL")
        return self


class ProcessingConfig(_Strict):
    """How the worker runs the engine (the rule chooses the model)."""

    #: One worker per entry (``[cuda:0, cuda:1]``); ``auto`` is one per visible GPU, else
    #: one on the CPU.
    device: str | tuple[str, ...] = "auto"
    folds: tuple[int, ...] | None = None
    tile_step_size: float | None = Field(default=None, gt=0.0, le=1.0)
    #: Autocast dtype of the network (auto: bf16 where native, fp16 on older GPUs, else fp32).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: Compile each fold's network when the model is loaded (tens of seconds per fold, once).
    compile: bool = False
    #: torch CPU threads of each worker on the CPU; null: this process's cores, shared out
    #: among its CPU workers. Several `segnode worker` processes on one machine: set
    #: cores / workers (`--threads`), or their threads fight over the same cores.
    cpu_threads: int | None = Field(default=None, ge=1, le=1024)

    @field_validator("device")
    @classmethod
    def _check_devices(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, str):
            return check_device(value)
        if not value:
            raise ValueError("must name at least one device")
        if "auto" in value and len(value) > 1:
            raise ValueError("auto stands alone: list devices (cpu, cuda:N) instead")
        return tuple(check_device(entry) for entry in value)


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


class LimitsConfig(_Strict):
    """Bounds on what a peer may send; beyond one, the instance is quarantined with the reason."""

    #: An instance larger than this (MiB) is not stored as an instance.
    max_instance_mb: float = Field(default=2048.0, gt=0)
    #: NumberOfFrames above this in one instance.
    max_frames: int = Field(default=20000, ge=1)
    #: A volume with more voxels (millions) fails its job with the reason, before decoding.
    max_volume_megavoxels: float = Field(default=500.0, gt=0)
    #: The first instance of one more series in a study that has this many is quarantined.
    max_series_per_study: int = Field(default=1000, ge=1)
    #: Jobs running at once over every worker sharing the catalogue (None: one per worker).
    max_running_jobs: int | None = Field(default=None, ge=1)


class WebConfig(_Strict):
    """The dashboard, JSON API, metrics and health endpoints, served by ``segnode serve``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    #: Bearer token for actions (retry, echo); on a non-loopback host also for reading.
    token: str | None = Field(default=None, min_length=16)
    #: Show patient names and IDs on the pages (UIDs and accession numbers otherwise).
    show_patient_names: bool = False

    _check_host = field_validator("host")(_listen_address)
    _expand = field_validator("token", mode="before")(_from_environment)

    @model_validator(mode="after")
    def _token_off_loopback(self) -> WebConfig:
        if self.enabled and not _is_loopback(self.host) and not self.token:
            raise ValueError(f"web.token: required when web.host is {self.host} (not loopback): "
                             "the pages would be open to the network")
        return self

    @property
    def open_reading(self) -> bool:
        """True when pages and the read API need no token (bound to loopback)."""
        return _is_loopback(self.host)


class LoggingConfig(_Strict):
    """How the node logs: plain text or one JSON event per line; never patient data."""

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ReportsConfig(_Strict):
    """Wording of the PDF and preview reports (rules choose whether to send them)."""

    disclaimer: str = Field(default=DEFAULT_DISCLAIMER, min_length=1)


class NodeConfig(_Strict):
    """The whole ``config.yaml``."""

    node: ListenerConfig = Field(default_factory=ListenerConfig)
    callers: tuple[CallerConfig, ...] = ()
    destinations: tuple[DestinationConfig, ...] = ()
    rules: tuple[RuleConfig, ...] = ()
    timing: TimingConfig = Field(default_factory=TimingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)
    stations: StationSettings = Field(default_factory=StationSettings)
    web: WebConfig = Field(default_factory=WebConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    reports: ReportsConfig = Field(default_factory=ReportsConfig)

    @model_validator(mode="after")
    def _check_references(self) -> NodeConfig:
        names = [d.name for d in self.destinations]
        problems = []
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            problems.append(f"destinations: duplicate name(s) {', '.join(duplicated)}")
        rule_names = [r.name for r in self.rules]
        duplicated = sorted({n for n in rule_names if rule_names.count(n) > 1})
        if duplicated:
            problems.append(f"rules: duplicate name(s) {', '.join(duplicated)}")
        for index, rule in enumerate(self.rules):
            unknown = [d for d in rule.destinations if d not in names]
            if unknown:
                problems.append(
                    f"rules.{index}.destinations: unknown destination(s) {', '.join(unknown)}"
                    f" (configured: {', '.join(names) or 'none'})"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def destination(self, name: str) -> DestinationConfig:
        """The destination called ``name``; raises :class:`ConfigError` when absent."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none"
        raise ConfigError(f"Unknown destination '{name}' (configured: {known}).")

    @property
    def database_url(self) -> str:
        """The catalogue URL (``database.url``, SQLite next to the spool if unset)."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.storage.spool_dir.parent / 'segnode.db'}"


_STORAGE_DEFAULTS = {
    "spool_dir": "var/spool",
    "quarantine_dir": "var/quarantine",
    "output_dir": "var/outputs",
    "corrections_dir": "var/corrections",
}


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative paths in ``storage`` and the TLS sections relative to ``base``."""

    def fix(section: Any, keys: tuple[str, ...]) -> None:
        if not isinstance(section, dict):
            return
        for key in keys:
            value = section.get(key)
            if isinstance(value, str) and value:
                expanded = Path(value).expanduser()
                section[key] = str(expanded if expanded.is_absolute() else base / expanded)

    if raw.get("storage") is None:
        raw["storage"] = {}
    storage = raw["storage"]
    if isinstance(storage, dict):
        for key, default in _STORAGE_DEFAULTS.items():
            storage.setdefault(key, default)
    database = raw.setdefault("database", {}) if raw.get("database") is None else raw["database"]
    if isinstance(database, dict) and not database.get("url"):
        database["url"] = f"sqlite:///{base / 'var' / 'segnode.db'}"
    fix(storage, (*_STORAGE_DEFAULTS, "models_dir"))
    node = raw.get("node")
    if isinstance(node, dict):
        fix(node.get("tls"), ("certificate", "private_key", "ca_certificates"))
    destinations = raw.get("destinations")
    for dest in destinations if isinstance(destinations, list) else ():
        if isinstance(dest, dict):
            fix(dest.get("tls"), ("ca_certificates", "certificate", "private_key"))


def load_config(path: Path) -> NodeConfig:
    """Read and validate ``path``.

    Raises
    ------
    ConfigError
        When the file is missing or not YAML (naming the file), or when any
        key is unknown or any value wrong (one line per problem, each with its
        key path).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Configuration file '{path}' cannot be read: {exc.strerror}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Configuration file '{path}' is not YAML (not UTF-8 text).") from None
    _refuse_before_parsing(text, path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Configuration file '{path}' is not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"Configuration file '{path}' nests lists or mappings too deeply."
                          ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Configuration file '{path}' must hold a mapping of sections.")
    _refuse_expansion(raw, path)
    _resolve_paths(raw, path.resolve().parent)
    try:
        return NodeConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(
            f"Configuration file '{path}' has errors:\n{format_validation_error(exc)}"
        ) from None


#: Largest configuration file read (a real one is a few kilobytes).
MAX_CONFIG_BYTES = 1 << 20
#: Most flow brackets (``[`` ``{``) open at once before the YAML parser sees the text.
MAX_OPEN_BRACKETS = 128


def _refuse_before_parsing(text: str, path: Path) -> None:
    """Refuse what would take PyYAML minutes: a huge file, thousands of open brackets.

    PyYAML's scanner does work proportional to the open flow brackets for
    every token, so 10 000 nested ``[`` take seconds and 100 000 hours. One
    linear pass counts them; brackets inside strings count too, which only
    matters for a text that no configuration comes near.
    """
    size = len(text.encode("utf-8"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"Configuration file '{path}' is {size} bytes, more than "
                          f"{MAX_CONFIG_BYTES}.")
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}" and depth:
            depth -= 1
    if deepest > MAX_OPEN_BRACKETS:
        raise ConfigError(f"Configuration file '{path}' nests lists or mappings too deeply "
                          f"({deepest} brackets open at once, at most {MAX_OPEN_BRACKETS}).")


#: Most values a configuration may expand to (YAML aliases can repeat a block many times).
MAX_CONFIG_VALUES = 100_000
#: Deepest nesting of lists and mappings a configuration may have.
MAX_CONFIG_DEPTH = 32


def _refuse_expansion(raw: Any, path: Path) -> None:
    """Refuse a document that is nested too deeply or expands (through aliases) too far."""
    pending: list[tuple[Any, int]] = [(raw, 0)]
    seen = 0
    while pending:
        node, depth = pending.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(f"Configuration file '{path}' expands to more than "
                              f"{MAX_CONFIG_VALUES} values (YAML aliases repeating blocks?).")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"Configuration file '{path}' nests lists or mappings more than "
                              f"{MAX_CONFIG_DEPTH} deep.")
        children = node.values() if isinstance(node, dict) else node if isinstance(
            node, list) else ()
        pending.extend((child, depth + 1) for child in children)
