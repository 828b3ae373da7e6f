"""One configuration for every command: defaults < TOML file < environment < command-line flags.

File: ``--config FILE``, else ``$BLINDSPOT_CONFIG``, else ``/etc/blindspot/blindspot.toml`` if it exists.
Environment: ``BLINDSPOT_<KEY>`` for top-level keys and ``BLINDSPOT_<SECTION>_<KEY>`` inside a section,
e.g. ``BLINDSPOT_RETENTION_DAYS=90``, ``BLINDSPOT_PIPELINE_SNAPSHOT_INTERVAL_S=5``,
``BLINDSPOT_HTTP_PIDS=12,34``. Values are typed and checked by pydantic (pydantic-settings maps the
environment); a wrong one is refused naming the key and where it came from. Secrets (Kafka SASL
passwords, the ClickHouse password) are read from the environment or files only, never from here.

Sections: ``[tcp]`` ``[http]`` ``[pipeline]`` (agent/config.py), ``[kafka]`` (both sides), ``[ingest]``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from agent.config import HttpConfig, PipelineConfig, TcpSourceConfig
from contract.errors import ConfigError
from ingest.kafka_source import KafkaSourceConfig

DEFAULT_FILE = Path("/etc/blindspot/blindspot.toml")
ENV_PREFIX = "BLINDSPOT_"
MAX_FILE_BYTES = 1 << 20
# BLINDSPOT_* variables that are not settings: the config file's name, librdkafka pass-through
# (contract/kafka.py), secrets read where they are used, and the test suite's knobs.
NOT_SETTINGS = ("BLINDSPOT_CONFIG", "BLINDSPOT_RDKAFKA_", "BLINDSPOT_KAFKA_AGENT_PASSWORD",
                "BLINDSPOT_CLICKHOUSE_", "BLINDSPOT_GRAFANA_", "BLINDSPOT_TEST_", "BLINDSPOT_GO_",
                "BLINDSPOT_CACHE", "BLINDSPOT_BENCH_")

__all__ = ["Config", "ConfigError", "IngestSettings", "KafkaSettings", "load", "parse_address", "secure_data_dir"]


def parse_address(address: str, what: str = "metrics_address") -> tuple[str, int]:
    """``HOST:PORT`` (HOST may be empty or a bracketed IPv6 address) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} {address!r}: expected HOST:PORT (or 'off')")
    return host.strip("[]"), int(port)


def _address(value: str) -> str:
    if value not in ("", "off"):
        parse_address(value)
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(_Section):
    """Where the agents publish and the ingest workers consume (both sides must agree)."""

    bootstrap: str = ""  # host:port[,host:port]; required by `agent` and `ingest`
    topic_prefix: str = ""  # prefix of every topic name (e.g. "staging.")
    properties: str | None = None  # librdkafka properties file (TLS, SASL): contract/kafka.py


class IngestSettings(_Section):
    """``blindspot ingest``: consumer group, batches, where ClickHouse is."""

    group: str = KafkaSourceConfig.group_id
    batch_max_rows: int = Field(KafkaSourceConfig.batch_max_rows, ge=1)
    batch_max_bytes: int = Field(KafkaSourceConfig.batch_max_bytes, ge=1)
    batch_max_age_s: float = Field(KafkaSourceConfig.batch_max_age_s, gt=0)
    retry_initial_s: float = Field(KafkaSourceConfig.retry_initial_s, gt=0)
    retry_max_s: float = Field(KafkaSourceConfig.retry_max_s, gt=0)
    # Rows older than the retention on arrival: counted `expired` and dropped, or also dead-lettered.
    expired: Literal["drop", "dead-letter"] = "drop"
    clickhouse_url: str | None = None  # http(s)://user@host:port/, no password (env or file)
    clickhouse_password_file: str | None = None
    metrics_address: str = "127.0.0.1:9436"

    _check_address = field_validator("metrics_address")(_address)


class Config(BaseSettings):
    # BLINDSPOT_<SECTION>_<KEY>: split once after the prefix. No JSON decoding of values: lists are
    # comma-separated (agent/config.py CommaList).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="_", env_nested_max_split=1,
                                      enable_decoding=False, extra="forbid", validate_assignment=True)

    host: str = ""  # the name every record carries; empty: the machine's (resolved once, by load)
    data_dir: Path = Path("/var/lib/blindspot")
    retention_days: int = Field(30, ge=1)
    metrics_address: str = "127.0.0.1:9435"  # the agent's /metrics; "off" to disable
    tcp: TcpSourceConfig = TcpSourceConfig()
    http: HttpConfig = HttpConfig()
    pipeline: PipelineConfig = PipelineConfig()
    kafka: KafkaSettings = KafkaSettings()
    ingest: IngestSettings = IngestSettings()

    _check_address = field_validator("metrics_address")(_address)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init) over the environment given to load() over the file; no .env or secrets folder.
        env, file_values = _LOADING.get()
        return (init_settings, _Env(settings_cls, env), _Values(settings_cls, file_values))


class _Env(EnvSettingsSource):
    """The environment given to ``load`` (tests pass their own), without the variables that are not
    settings (NOT_SETTINGS)."""

    def __init__(self, settings_cls: type[BaseSettings], env: dict[str, str]) -> None:
        self._given = {k.lower(): v for k, v in env.items() if not k.startswith(NOT_SETTINGS)}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> dict[str, str | None]:
        return dict(self._given)


class _Values(PydanticBaseSettingsSource):
    """The config file's values, already read (load reads it under a size bound)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


_LOADING: ContextVar[tuple[dict[str, str], dict[str, Any]]] = ContextVar("_LOADING", default=({}, {}))


def load(path: str | None = None, env: dict[str, str] | None = None, flags: dict[str, Any] | None = None
         ) -> Config:
    """The configuration: the file (``path``, else $BLINDSPOT_CONFIG, else DEFAULT_FILE if present), then
    the environment, then ``flags`` (nested dicts by section, only the flags given). The host is resolved
    here, once. Raises ConfigError naming each wrong key and where its value came from."""
    env = dict(os.environ if env is None else env)
    chosen = path or env.get("BLINDSPOT_CONFIG") or (str(DEFAULT_FILE) if DEFAULT_FILE.exists() else None)
    values = _read_file(chosen) if chosen else {}
    flags = flags or {}
    token = _LOADING.set((env, values))
    try:
        cfg = Config(**flags)
    except ValidationError as e:
        raise ConfigError(_explain(e, chosen, env, flags)) from None
    finally:
        _LOADING.reset(token)
    if not cfg.host:
        cfg.host = socket.gethostname()
    return cfg


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(f"config file {path}: larger than {MAX_FILE_BYTES} bytes")
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {e.start})") from e
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from e


def _explain(e: ValidationError, path: str | None, env: dict[str, str], flags: dict[str, Any]) -> str:
    """One line per wrong value: where it came from (flag, environment variable, file), the key, why."""
    lines = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)][:2]
        key = ".".join(loc)
        env_name = ENV_PREFIX + "_".join(loc).upper()
        if _dig(flags, loc) is not None:
            origin = f"flag for {key}"
        elif env_name in env:
            origin = f"environment variable {env_name}"
        elif path:
            origin = f"config file {path}: " + (f"[{loc[0]}] {loc[1]}" if len(loc) > 1 else key)
        else:
            origin = key
        got = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {str(got)[:80]!r})"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{origin}: {msg}{shown}")
    return "; ".join(lines)


def _dig(values: dict[str, Any], loc: list[str]) -> Any:
    for part in loc:
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values


def secure_data_dir(path: str | os.PathLike[str]) -> Path:
    """The data folder holds every captured path and header: create it 0700, or accept an existing
    folder only if it is ours and nobody else can write it; then make it (and what is in it) private."""
    p = Path(path)
    old = os.umask(0o077)
    try:
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"data folder {p}: exists and is not a folder") from None
    except OSError as e:
        raise ConfigError(f"data folder {p}: cannot create it ({e.strerror})") from None
    finally:
        os.umask(old)
    st = p.lstat()
    if not p.is_dir() or p.is_symlink():
        raise ConfigError(f"data folder {p}: exists and is not a folder")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"data folder {p}: owned by uid {st.st_uid}, not by this user ({os.geteuid()}); "
                          "refusing to write there")
    if st.st_mode & 0o022:
        raise ConfigError(f"data folder {p}: writable by group or others (mode {st.st_mode & 0o777:o}); "
                          f"refusing it (chmod 700 {p} if it is yours)")
    if st.st_mode & 0o777 != 0o700:  # older versions made it (and its files) readable: make them private once
        os.chmod(p, 0o700)
        for root, dirs, files in os.walk(p):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    f = Path(root) / name
                    if not f.is_symlink():
                        os.chmod(f, f.stat().st_mode & 0o700)
    return p
