"""The agent's settings, one model per part: typed and validated (pydantic), so a wrong value is refused
with the key's name wherever it came from. The application's config (blindspot/config.py) nests these
as the ``[tcp]``, ``[http]`` and ``[pipeline]`` sections; the host name is not here: the application
resolves it once and hands it to each part."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from agent import http_parse


def _comma_list(value: object) -> object:
    """``"a, b"`` (an environment variable or a flag) -> ``("a", "b")``; lists pass as they are."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value


CommaList = Annotated[tuple[str, ...], BeforeValidator(_comma_list)]
CommaInts = Annotated[tuple[int, ...], BeforeValidator(_comma_list)]


class Section(BaseModel):
    """A config section: unknown keys are errors; values are checked when set, too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TcpSourceConfig(Section):
    max_conns: int = Field(262_144, ge=1)  # open connections tracked at once; beyond: counted as lost
    ringbuf_pages: int = Field(4096, ge=1)  # 16 MiB: ~100k records, ~4 s of the highest churn measured (bench_tcp)
    # 256 KiB, ~1,600 records: where a record goes when the main ring refuses it (bpf/tcp_lifecycle.c)
    rescue_ringbuf_pages: int = Field(64, ge=1)
    # A closed connection is emitted when its owner closes the fd; one whose owner keeps the fd
    # this long after TCP_CLOSE is emitted by the snapshot sweep instead.
    closed_grace_s: float = Field(30.0, ge=0)
    # The ring is read at every pipeline poll; what was read is decoded in one batch (a fixed ~0.5 ms
    # plus ~0.35 us a record here) at most this long after, or once this many records wait.
    decode_interval_s: float = Field(0.25, gt=0)
    decode_max_rows: int = Field(8192, ge=1)


class HttpConfig(Section):
    enabled: bool = True  # Go net/http requests (syscall tracepoints on Go processes only)
    go_uprobes: bool = False  # route patterns + outbound->inbound links, at ~19 us per probe hit here
    # HTTPS of Go programs (crypto/tls plaintext, agent/go_tls_source.py): uprobes on every TLS Read and
    # Write, at ~19 us per hit here (3+ per exchange): off by default (docs/go-tls.md).
    go_tls: bool = False
    # Cleartext HTTP/2 and gRPC (h2c) of Go programs: uprobes on every net.Conn Read and Write, at ~19 us
    # per hit here: off by default (docs/go-tls.md).
    go_h2c: bool = False
    # With go_h2c: link a gRPC call a grpc-go handler makes to its inbound call (parent_request_id): one
    # more probe hit per inbound stream of every traced grpc-go server and per outbound stream.
    grpc_link: bool = True
    headers: CommaList = tuple(http_parse.HEADER_COLUMNS)  # allow-list (lower-case names)
    # Stored paths go through http_parse.redact_path (tokens, ;matrix params); False keeps them raw.
    # Userinfo and query strings are never stored either way; routes are always templated.
    redact_paths: bool = True
    max_value: int = Field(http_parse.MAX_VALUE, ge=1, le=1024)  # bytes kept of each header value
    head_max: int = Field(1024, ge=256, le=4096)  # bytes of each request head captured (power of two)
    max_conns: int = Field(16384, ge=1)
    ringbuf_pages: int = Field(2048, ge=1)  # 8 MiB: ~6,000 exchanges, read when 1/8 full or at each decode
    link_wait_s: float = Field(2.0, ge=0)  # how long an outbound row waits for its inbound one
    quiet_s: float = Field(1.0, ge=0)  # an exchange with nothing moved for this long after its response ended
    # Decoding has a fixed cost per batch (~3 ms here), so records wait to be decoded together: at
    # most this long (the pipeline's batches wait 1 s anyway) or this many.
    decode_interval_s: float = Field(1.0, gt=0)
    decode_max_rows: int = Field(4096, ge=1)  # bounds one decode (~15 ms here), so the ring is read again soon
    services: dict[str, tuple[str, str]] = {}  # comm -> (service, version)
    pids: CommaInts = ()  # trace only these; empty = every Go process
    # Executables are read in a child process with memory and time limits (agent/inspect_worker.py).
    inspect_in_child: bool = True
    exe_prefix: str = ""  # trace only binaries under this path (tests: the Go build cache)


class PipelineConfig(Section):
    poll_ms: int = Field(50, ge=1)  # drain interval: ring buffers must hold this long's worth of records
    # Batches: None is the component's own (COMPONENT_DEFAULTS in agent/pipeline.py): into the embedded
    # store, whose every insert costs its rollup views ~80 ms of CPU and 7 new parts, 100,000 rows or
    # 5 s, 16 queued; to Kafka, 20,000 rows or 1 s, 64 queued.
    batch_max_rows: int | None = Field(None, ge=1)
    batch_max_age_s: float | None = Field(None, gt=0)
    queue_batches: int | None = Field(None, ge=1)  # hand-off bound; beyond it, records are dropped and counted
    snapshot_interval_s: float = Field(10.0, gt=0)
    counters_interval_s: float = Field(60.0, gt=0)
