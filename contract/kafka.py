"""Kafka client settings both sides share: topic names, and librdkafka pass-through settings.

Security settings (TLS, SASL) pass straight through to librdkafka, from a properties file
(``--kafka-config FILE``, ``key=value`` lines in librdkafka's own names, e.g. ``security.protocol``,
``sasl.mechanism``, ``sasl.username``, ``sasl.password``, ``ssl.ca.location``) or from the environment
(``BLINDSPOT_RDKAFKA_SASL_PASSWORD`` -> ``sasl.password``: prefix stripped, ``_`` -> ``.``, lowercased;
the file may also be named by ``$BLINDSPOT_KAFKA_PROPERTIES``).
Never from command-line values (visible in ``ps``), and never logged: ``redacted()`` hides them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENV_PREFIX = "BLINDSPOT_RDKAFKA_"
ENV_FILE = "BLINDSPOT_KAFKA_PROPERTIES"
_SECRET_WORDS = ("password", "secret", "key", "token", "jaas")


def load_properties(path: str | os.PathLike[str]) -> dict[str, str]:
    """librdkafka ``key=value`` lines; ``#`` comments and blank lines ignored."""
    out: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{n}: expected key=value")
        k, v = line.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k[len(ENV_PREFIX):].lower().replace("_", "."): v for k, v in env.items()
            if k.startswith(ENV_PREFIX)}


def client_settings(properties_file: str | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Pass-through settings: the file (or ``$BLINDSPOT_KAFKA_PROPERTIES``), then the environment on top."""
    env = os.environ if environ is None else environ
    path = properties_file or env.get(ENV_FILE)
    out = load_properties(path) if path else {}
    out.update(from_env(dict(env)))
    return out


def redacted(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` safe to log."""
    return {k: ("***" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in conf.items()}
