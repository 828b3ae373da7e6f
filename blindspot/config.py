"""Configuration: defaults < TOML file < environment < command-line flags.

File: ``--config FILE``, else ``$BLINDSPOT_CONFIG``, else ``/etc/blindspot/blindspot.toml`` if it exists.
Environment: ``BLINDSPOT_<KEY>`` for top-level keys and ``BLINDSPOT_<SECTION>_<KEY>`` inside a section,
e.g. ``BLINDSPOT_RETENTION_DAYS=90``, ``BLINDSPOT_PIPELINE_SNAPSHOT_INTERVAL_S=5``. Secrets (Kafka
SASL passwords, the ClickHouse password) are read from the environment or files only, never here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.http_source import HttpConfig
from agent.pipeline import PipelineConfig
from agent.tcp_source import TcpSourceConfig

DEFAULT_FILE = Path("/etc/blindspot/blindspot.toml")


@dataclass
class Config:
    host: str = ""  # defaults to the machine's host name
    data_dir: str = "/var/lib/blindspot"
    retention_days: int = 30
    metrics_address: str = "127.0.0.1:9435"  # "off" to disable
    http_enabled: bool = True  # Go net/http requests (syscall tracepoints on Go processes only)
    tcp: TcpSourceConfig = field(default_factory=TcpSourceConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


class ConfigError(ValueError):
    """A config file or environment value that cannot be used."""


def _coerce(value: str, to: Any, name: str) -> Any:
    try:
        if to is bool or to == "bool":
            return value.lower() in ("1", "true", "yes", "on")
        if to in (int, "int"):
            return int(value)
        if to in (float, "float"):
            return float(value)
        if isinstance(to, str) and to.startswith("tuple[str"):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value
    except ValueError as e:
        raise ConfigError(f"{name}: cannot read {value!r} as {to}") from e


def _apply(obj: Any, values: dict[str, Any], prefix: str, env: dict[str, str]) -> None:
    for f in dataclasses.fields(obj):
        current = getattr(obj, f.name)
        env_name = f"{prefix}{f.name}".upper()
        if dataclasses.is_dataclass(current):
            sub = values.get(f.name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"[{f.name}] must be a table")
            _apply(current, sub, f"{env_name}_", env)
            continue
        if f.name in values:
            v = values[f.name]
            setattr(obj, f.name, tuple(v) if isinstance(v, list) else v)
        if env_name in env:
            setattr(obj, f.name, _coerce(env[env_name], f.type, env_name))
    unknown = set(values) - {f.name for f in dataclasses.fields(obj)}
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")


def parse_address(address: str, what: str = "--metrics-address") -> tuple[str, int]:
    """``HOST:PORT`` (HOST may be empty or a bracketed IPv6 address) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {address!r}: expected HOST:PORT (or 'off')")
    return host.strip("[]"), int(port)


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
    os.chmod(p, 0o700)
    for root, dirs, files in os.walk(p):  # files of older versions were 0644
        for name in dirs + files:
            with contextlib.suppress(OSError):
                f = Path(root) / name
                if not f.is_symlink():
                    os.chmod(f, f.stat().st_mode & 0o700)
    return p


def load(path: str | None = None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ if env is None else env)
    chosen = path or env.get("BLINDSPOT_CONFIG") or (str(DEFAULT_FILE) if DEFAULT_FILE.exists() else None)
    values: dict[str, Any] = {}
    if chosen:
        try:
            values = tomllib.loads(Path(chosen).read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {chosen}: not UTF-8 text (byte {e.start})") from e
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file {chosen}: {e}") from e
    cfg = Config()
    _apply(cfg, values, "BLINDSPOT_", {k: v for k, v in env.items() if k != "BLINDSPOT_CONFIG"})
    return cfg
