"""One style for every component's Prometheus metrics: a ``MetricSet`` subclass declares them in
``__init__(registry)``, and ``on(registry)`` makes it once per registry (a registry refuses a second
metric of the same name). The default registry is what a process's ``--metrics-address`` serves."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from prometheus_client import REGISTRY, CollectorRegistry


class MetricSet:
    _made: ClassVar[dict[tuple[type, int], Any]] = {}

    def __init__(self, registry: CollectorRegistry) -> None:
        self.kw: dict[str, Any] = {"registry": registry}

    @classmethod
    def on(cls, registry: CollectorRegistry | None = None) -> Self:
        registry = REGISTRY if registry is None else registry
        key = (cls, id(registry))
        made = MetricSet._made.get(key)
        if made is None:
            made = MetricSet._made[key] = cls(registry)
        return made  # type: ignore[no-any-return]
