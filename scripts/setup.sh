#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for Blindspot: system packages, kernel headers for bcc, tracefs,
# and the Python virtualenv. Idempotent; each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------------
# python3-bpfcc/bpfcc-tools: bcc (PyPI's "bcc" is an unrelated package); bpftool: reads kernel struct
# offsets from BTF; linux-headers-amd64: bcc needs *some* headers to compile; wrk: load for bench/.
# openjdk-17-jre-headless/maven: scripts/kafka.sh assembles the local Kafka broker from Maven Central jars.
# nftables/iproute2: the packet-drop tests drop packets with an nft rule inside a network namespace.
DEB_PKGS=(python3-bpfcc bpfcc-tools bpftool linux-headers-amd64 wrk openjdk-17-jre-headless maven nftables iproute2)
missing=()
for p in "${DEB_PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then echo "setup: need root to apt-get install ${missing[*]}" >&2; exit 1; fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Kernel headers for bcc ------------------------------------------------------------------
# bcc looks in /lib/modules/$(uname -r)/{build,source}. When the running kernel ships none, point
# them at Debian's headers. Their struct layouts may not match this kernel: the agent reads every
# kernel struct offset from BTF instead (agent/btf.py), so only type names come from these headers.
KREL=$(uname -r)
if [[ $EUID -eq 0 && ! -e /lib/modules/$KREL/build/include ]]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [[ -n $hdr && -n $common ]]; then
    log "linking /lib/modules/$KREL/{build,source} -> $hdr (no headers for the running kernel)"
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$hdr" "/lib/modules/$KREL/build"
    ln -sfn "$common" "/lib/modules/$KREL/source"
  fi
fi

# --- tracefs (bcc reads tracepoint formats from it) --------------------------------------------
if [[ $EUID -eq 0 && ! -e /sys/kernel/tracing/events ]]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi

# --- Python virtualenv ------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "setup: Python 3.11+ required" >&2; exit 1; }
if [[ ! -x $VENV/bin/python ]]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
log "pip install -e .[dev]"
"$VENV/bin/pip" install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[dev]'

# bcc's Python module is pure Python over libbcc.so: link just that folder into the venv.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [[ -d /usr/lib/python3/dist-packages/bcc && ! -e $site/bcc ]]; then
  ln -s /usr/lib/python3/dist-packages/bcc "$site/bcc"
fi
# Kafka jars for the fleet tests and `make kafka-up` (cached outside the tree; skipped when cached).
bash scripts/kafka.sh fetch
log "ready: $VENV/bin/blindspot"
