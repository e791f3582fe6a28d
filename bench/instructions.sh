#!/usr/bin/env bash
# A refused start's cost against a served start's in instructions (valgrind's callgrind), not
# seconds: the same count for the same build whatever else the machine is doing, where the
# CPU-time pairs of `bench/run.sh --refusals` move by ±15 % from one run to the next. Set up as
# those are (PostgreSQL, the http SMS provider pointed at the load tool's sink, a brand with
# the default rules): a walk through one prefix, refused; then numbers spread over another,
# served. User-space instructions only: the kernel's share (sockets, about a quarter of either
# start's CPU) is not in it.
#
#   bash bench/instructions.sh                 # about 3 minutes
#   BENCH_BIN=/tmp/other bash bench/instructions.sh   # another build, for an A/B
#
# Needs valgrind and what the README's test command sets up (PostgreSQL on 127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${SECONDS_PER_RUN:-20}"
pg="${ORDERGUARD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
command -v valgrind >/dev/null || { echo "valgrind is missing (Debian: valgrind)" >&2; exit 1; }
source bench/common.sh
bench_binary

work="$(mktemp -d)"
db="og_bench_instructions_$(date +%s)_$$"
base="${pg%/*}"
service=""
cleanup() {
  if [ -n "$service" ]; then kill "$service" 2>/dev/null || true; wait "$service" 2>/dev/null || true; fi
  psql "$pg" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The attack brand of bench/run.sh: the default rules, only the brand-wide ceiling raised.
cp -r brands "$work/brands"
attack_brand "$work/brands"
key="$attack_key"

psql "$pg" -qc "CREATE DATABASE $db" >/dev/null
ORDERGUARD_HTTP__PORT=18080 \
ORDERGUARD_DATA_DIR="$work/data" \
ORDERGUARD_BRANDS_DIR="$work/brands" \
ORDERGUARD_DATABASE__URL="$base/$db" \
ORDERGUARD_DATABASE__MAX_CONNECTIONS=16 \
ORDERGUARD_SMS__PROVIDERS='[{kind = "http", name = "bench", url = "http://127.0.0.1:19100/sms", timeout_ms = 5000}]' \
ORDERGUARD_LOG__FILTER=warn \
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" "$bin" serve >"$work/service.log" 2>&1 &
service=$!
for _ in $(seq 1 600); do
  curl -sf http://127.0.0.1:18080/readyz >/dev/null && break
  kill -0 "$service" 2>/dev/null || { echo "the service did not start:" >&2; cat "$work/service.log" >&2; exit 1; }
  sleep 0.5
done

load() { # $1: name, then bench arguments
  local name="$1"; shift
  "$bin" bench attack "$@" --target http://127.0.0.1:18080 --key "$key" --sms-sink 127.0.0.1:19100 \
    --upstream 127.0.0.1:19101 --json > "$work/$name.json"
}
# $1: name, then bench arguments. A warm-up, uncounted; the counters zeroed; the run; its
# counts written (callgrind numbers its dumps 1, 2, …).
run() {
  local name="$1"; shift
  echo "$name…" >&2
  load "$name-warmup" "$@" --duration 5
  callgrind_control -z "$service" >/dev/null 2>&1
  load "$name" "$@" --duration "$seconds"
  sleep 2
  callgrind_control -d "$name" "$service" >/dev/null 2>&1
}
# Each run in its own prefix, as bench/run.sh --refusals: 8 pumpers (valgrind is slow), the
# buyers' flows at 0.1/s.
run refused --model open --rate 0.1 --phone-prefix +49172 --pump-prefix +49178 --pump-concurrency 8
run served --model open --rate 0.1 --phone-prefix +49172 --pump-prefix +49163 --pump-concurrency 8 --pump-spread

python3 - "$work" "$service" <<'PY'
import json, os, sys
work, pid = sys.argv[1], sys.argv[2]
def per_start(name, dump):
    with open(os.path.join(work, f"{name}.json")) as f:
        pumping = json.load(f)["pumping"]
    total = 0
    with open(os.path.join(work, f"callgrind.{pid}.{dump}")) as f:
        for line in f:
            if line.startswith("summary:"):
                total = int(line.split()[1])
                break
    return pumping, total / max(pumping["starts"], 1)
refused, refused_ir = per_start("refused", 1)
served, served_ir = per_start("served", 2)
print(f"refused: {refused['starts']} starts ({refused['refused']} refused), {refused_ir:,.0f} instructions each")
print(f"served:  {served['starts']} starts ({served['sent']} sent), {served_ir:,.0f} instructions each")
print(f"refused / served start, in instructions: {refused_ir / served_ir:.3f} (target <= 0.333)")
if refused["refused"] != refused["starts"] or served["sent"] != served["starts"]:
    print("warning: a run was not all refused / all served; its count mixes both", file=sys.stderr)
PY
