#!/usr/bin/env bash
# The suite as a newcomer meets it: a fresh clone of this checkout's HEAD in a temporary folder, every
# cache empty (pip, Go modules and toolchains, Go builds, the test programs, Kafka's jars, Maven's
# repository), then the README's `make test`. Afterwards nothing the run started may still be running.
#
#   scripts/test-fresh.sh [pytest args...]     (make test-fresh)
#
# Debian packages are the machine's: apt-installed ones cannot be made absent here, so a brand-new
# machine also spends about a minute in apt (scripts/setup.sh). KEEP_FRESH=1 keeps the folder.
set -euo pipefail
src=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
T=$(mktemp -d "${TMPDIR:-/tmp}/blindspot-fresh.XXXXXX")
chmod 755 "$T"  # like a checkout anywhere: tests run the CLI as another user too
cleanup() {
  if [[ ${KEEP_FRESH:-} != 1 ]]; then
    chmod -R u+w "$T" 2>/dev/null || true  # the Go module cache is read-only
    rm -rf "$T"
  fi
}
trap cleanup EXIT
log() { printf '\033[1m[test-fresh]\033[0m %s\n' "$*"; }

if [[ -n $(git -C "$src" status --porcelain --untracked-files=no) ]]; then
  log "note: uncommitted changes in $src are not in the clone (it tests HEAD $(git -C "$src" rev-parse --short HEAD))"
fi
git clone -q --no-hardlinks "$src" "$T/blindspot"
mkdir -p "$T/cache"
export BLINDSPOT_CACHE=$T/cache/blindspot BLINDSPOT_GO_CACHE=$T/cache/gobuild XDG_CACHE_HOME=$T/cache/xdg
export GOMODCACHE=$T/cache/gomod GOCACHE=$T/cache/gobuildcache GOPATH=$T/cache/gopath
export PIP_CACHE_DIR=$T/cache/pip MAVEN_OPTS="${MAVEN_OPTS:-} -Dmaven.repo.local=$T/cache/m2"
# Variables of ours from the calling shell would make the run less fresh.
while IFS='=' read -r k _; do unset "$k"; done < <(env | grep -E '^BLINDSPOT_(TEST_|HOST|CONFIG)' || true)

log "fresh clone of $(git -C "$T/blindspot" rev-parse --short HEAD) in $T, caches empty; make test"
start=$SECONDS
rc=0
(cd "$T/blindspot" && make test ARGS="$*") || rc=$?
log "make test exited $rc after $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"

# Nothing the run started may outlive it: look for processes whose command line or folder is ours.
left=()
for d in /proc/[0-9]*; do
  pid=${d#/proc/}
  [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
  cmd=$( { tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null || true)  # a process may be gone by now
  cwd=$(readlink "$d/cwd" 2>/dev/null || true)
  if [[ $cmd == *"$T"* || $cwd == "$T"* ]]; then left+=("$pid $cmd"); fi
done
if ((${#left[@]})); then
  log "FAIL: ${#left[@]} process(es) outlived the run (killed now):"
  printf '  %s\n' "${left[@]}"
  for l in "${left[@]}"; do kill -KILL "${l%% *}" 2>/dev/null || true; done
  if [[ $rc == 0 ]]; then rc=1; fi
fi
exit "$rc"
