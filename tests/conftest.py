"""Shared fixtures. Root tests run the real agent (`blindspot run`) as a subprocess against the real
kernel and query it through its socket, exactly as a user would."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import procs
from tests.embedded_agent import Agent, running_agent

# One definition for the whole session: a fixture imported into several modules is one instance per
# module (each its own broker). Test modules use it without importing it.
from tests.kafka_fixture import kafka_bootstrap  # noqa: F401

# Hermetic: the agents and workers the suite starts read no config of this machine's
# (/etc/blindspot/blindspot.toml, BLINDSPOT_* variables of the shell), only what each test gives them.
_TEST_KNOBS = ("BLINDSPOT_TEST_", "BLINDSPOT_GO_CACHE", "BLINDSPOT_GO_VERSIONS", "BLINDSPOT_CACHE")
for _k in [k for k in os.environ if k.startswith("BLINDSPOT_") and not k.startswith(_TEST_KNOBS)]:
    del os.environ[_k]
os.environ["BLINDSPOT_CONFIG"] = os.devnull  # an empty file: defaults, then each test's overrides


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: loads BPF programs into the running kernel")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    with running_agent(tmp_path_factory.mktemp("blindspot-data")) as a:
        yield a


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    since = procs.mark()
    yield
    procs.reap(since)


@pytest.fixture(autouse=True, scope="session")
def _no_process_outlives_the_session() -> Iterator[None]:
    yield
    left = procs.reap(0)
    if left:  # a fixture that forgot its own: make it visible, but it is dead now
        print(f"\nkilled {len(left)} process(es) left running by fixtures: {left}")
