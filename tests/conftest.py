"""Shared fixtures. Root tests run the real agent (`blindspot run`) as a subprocess against the real
kernel and query it through its socket, exactly as a user would."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.embedded_agent import Agent, running_agent


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
