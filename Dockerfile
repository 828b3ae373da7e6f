# Blindspot image: the agent (`blindspot agent`, needs the host kernel: see compose.yaml for the exact
# privileges and mounts) and the ingest worker (`blindspot ingest`). Debian 12 like our hosts: bcc
# comes from Debian (python3-bpfcc; PyPI's "bcc" is another package) and runs on Debian's Python 3.11.
FROM debian:bookworm-slim

# bcc compiles the BPF program at start-up, so it needs clang/LLVM (pulled in by bpfcc) and kernel
# headers: those of the host are mounted at run time (/lib/modules, /usr/src); linux-headers-amd64 is
# the fallback bcc can compile against when the host ships none (struct offsets come from BTF anyway).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-bpfcc bpfcc-tools bpftool ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/blindspot
COPY pyproject.toml README.md ./
COPY blindspot ./blindspot
COPY agent ./agent
COPY ingest ./ingest
COPY contract ./contract
COPY bpf ./bpf
COPY grafana ./grafana
# A venv that also sees Debian's bcc module (pure Python over libbcc.so).
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir . \
 && ln -s /usr/lib/python3/dist-packages/bcc "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc"
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 BLINDSPOT_GRAFANA_DIR=/opt/blindspot/grafana

# Unprivileged by default (the ingest worker); the agent service in compose.yaml runs as root with
# the capabilities it needs.
RUN useradd --system --uid 10001 blindspot
USER blindspot
ENTRYPOINT ["blindspot"]
CMD ["--help"]
