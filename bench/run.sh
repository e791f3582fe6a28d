#!/usr/bin/env bash
# The benchmark: the database bound (pgbench running the writes of one flow), then the service
# in release mode on PostgreSQL with the http SMS provider pointed at the load tool's sink,
# the scenarios, the embedded SQLite, and the relay; one summary at the end.
#
#   bash bench/run.sh            # about 5 minutes
#   bash bench/run.sh --quick    # shorter runs, for a first look
#
# Needs what the README's test command sets up (PostgreSQL on 127.0.0.1:5432 with pgbench,
# python3). Everything targets 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

long=20; memory=60; warmup=10; only=""; pairs=0
case "${1:-}" in
  --quick) long=5; memory=10; warmup=3 ;;
  # --rules N: only verify with the rules on and off, N interleaved pairs of 8 s runs on one
  # service, and each pair's ratio: the rules' cost with less of the disk's drift in it.
  --rules) only=rules; pairs="${2:?--rules needs a number of pairs}"; long=8; warmup=5; buyers="${3:-64}" ;;
  # --refusals N: only a refused start's cost against a served start's, N interleaved pairs
  # of 6 s runs on one service, and each pair's ratio with the median.
  --refusals) only=refusals; pairs="${2:?--refusals needs a number of pairs}"; long=6; warmup=5 ;;
esac

pg="${ORDERGUARD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
command -v pgbench >/dev/null || { echo "pgbench is missing (Debian: postgresql-contrib or the server package)" >&2; exit 1; }
# BENCH_BIN: another build to measure (an earlier commit's, for an A/B).
source bench/common.sh
bench_binary

work="$(mktemp -d)"
stamp="$(date +%s)_$$"
service_db="og_bench_service_$stamp"
bound_db="og_bench_bound_$stamp"
pids=()
cleanup() {
  for pid in "${pids[@]:-}"; do kill "$pid" 2>/dev/null || true; done
  psql "$pg" -qc "DROP DATABASE IF EXISTS $service_db WITH (FORCE)" >/dev/null 2>&1 || true
  psql "$pg" -qc "DROP DATABASE IF EXISTS $bound_db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
base="${pg%/*}"

# 1. The database bound: the same writes as one flow, synchronous commit on. Measured before
#    and again after the service runs: the disk's fsync rate drifts (two runs nine minutes
#    apart gave 2,031 and 1,373 flows/s), so the ratio is printed against both.
bound() { # $1: before|after
  psql "$pg" -qc "CREATE DATABASE $bound_db" >/dev/null
  psql "$base/$bound_db" -q -f bench/pgbench/schema.sql >/dev/null 2>&1
  echo "pgbench ($1): the writes of a flow for ${long} s…" >&2
  pgbench -n -c 16 -j 2 -T "$long" -f bench/pgbench/start.sql -f bench/pgbench/check.sql "$base/$bound_db" > "$work/pgbench-$1.txt" 2>&1
  psql "$pg" -qc "DROP DATABASE $bound_db WITH (FORCE)" >/dev/null
  awk '/^tps = / {print $3; exit}' "$work/pgbench-$1.txt"
}
if [ -z "$only" ]; then tps_before="$(bound before)"; fi

# Each run starts from a settled database: the last run's dead rows vacuumed (CI's PostgreSQL
# runs with autovacuum off; a production one has it on) and its writes flushed.
settle() {
  if [ -n "${service_db:-}" ]; then psql "$base/$service_db" -qc "VACUUM ANALYZE" >/dev/null 2>&1 || true; fi
  psql "$pg" -qc "CHECKPOINT" >/dev/null 2>&1 || true
  sleep 2
}
settle

# 2. The service, with a bench brand: no resend cooldown, a 5 s TTL (mixed checks expiries),
#    and the load tool's upstream for gate mode.
key="og_bench_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cp -r brands "$work/brands"
mkdir -p "$work/brands/bench"
cat > "$work/brands/bench/brand.toml" <<TOML
display_name = "Bench"
sms_sender = "Bench"
allowed_countries = ["DE"]
[limits]
ttl_seconds = 5
resend_cooldown_seconds = 0
[upstream]
url = "http://127.0.0.1:19101/orders"
timeout_ms = 5000
# The default fraud rules run on every start (their cost is measured); only the brand-wide
# ceiling is raised past the bench's rate, and the pumping guard's thresholds past the mixed
# scenario's deliberate expiries and aborts in one prefix.
[fraud.rate_limits]
brand = ["10000000/1m"]
[fraud.pumping]
min_starts = 1000000
brand_min_starts = 0
[[api_keys]]
id = "bench"
hash = "sha256:$(printf %s "$key" | sha256sum | cut -d' ' -f1)"
TOML

# The same brand with the fraud rules off: what the rules cost, measured in the same run.
off_key="og_bench_off_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mkdir -p "$work/brands/benchoff"
sed -e '/^\[\[api_keys\]\]/,$d' -e 's/^brand_min_starts = 0$/brand_min_starts = 0\nmode = "off"/' \
  -e 's/^brand = \["10000000\/1m"\]$/brand = ["10000000\/1m"]\nmode = "off"/' \
  "$work/brands/bench/brand.toml" > "$work/brands/benchoff/brand.toml"
cat >> "$work/brands/benchoff/brand.toml" <<TOML
[[api_keys]]
id = "bench-off"
hash = "sha256:$(printf %s "$off_key" | sha256sum | cut -d' ' -f1)"
TOML

# The attack brand: the default fraud rules, only the brand-wide ceiling raised.
attack_brand "$work/brands"

http_providers='[{kind = "http", name = "bench", url = "http://127.0.0.1:19100/sms", timeout_ms = 5000}]'
smpp_providers='[{kind = "smpp", name = "smsc", host = "127.0.0.1", port = 19102, system_id = "bench", password = "bench", window = 32}]'
start_service() { # $1: database URL, $2: name, $3: SMS providers (default: the http one)
  ORDERGUARD_HTTP__PORT=18080 \
  ORDERGUARD_DATA_DIR="$work/data-$2" \
  ORDERGUARD_BRANDS_DIR="$work/brands" \
  ORDERGUARD_DATABASE__URL="$1" \
  ORDERGUARD_DATABASE__MAX_CONNECTIONS=16 \
  ORDERGUARD_SMS__PROVIDERS="${3:-$http_providers}" \
  ORDERGUARD_GATE__POLL_INTERVAL_MS=50 \
  ORDERGUARD_LOG__FILTER=warn \
  "$bin" serve >"$work/service-$2.log" 2>&1 &
  service=$!
  pids+=("$service")
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && return 0; sleep 0.1; done
  echo "the service did not start:" >&2; cat "$work/service-$2.log" >&2; exit 1
}

# PostgreSQL's CPU time so far in seconds: every postgres process's user and system time (the
# service's connections live as long as it does, so a run's difference is its own).
pg_cpu() {
  local total=0 pid
  for pid in $(pgrep -x postgres); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total $(getconf CLK_TCK)" | awk '{printf "%.2f", $1 / $2}'
}

load() { # $1: name, then bench arguments
  local name="$1"; shift
  settle
  echo "$name…" >&2
  local pg_before
  pg_before="$(pg_cpu)"
  "$bin" bench "$@" --target http://127.0.0.1:18080 --key "${bench_key:-$key}" --sms-sink 127.0.0.1:19100 \
    --upstream 127.0.0.1:19101 --pid "$service" --json > "$work/$name.json"
  echo "$pg_before $(pg_cpu)" | awk '{printf "%.2f", $2 - $1}' > "$work/$name.pg-cpu"
  if ! kill -0 "$service" 2>/dev/null; then
    echo "the service died during $name; its log ends:" >&2
    tail -n 40 "$work"/service-*.log >&2
    exit 1
  fi
}

psql "$pg" -qc "CREATE DATABASE $service_db" >/dev/null
start_service "$base/$service_db" pg
# A warm-up, not reported: the first seconds after pgbench (and a fresh service) vary most.
load warmup verify --model closed --concurrency 64 --duration "$warmup" --phone-prefix +49170
# --rules and --refusals: interleaved pairs, each pair's ratio and the median.
if [ -n "$only" ]; then
  if [ "$only" = rules ]; then
    # Each run its own mobile prefix (numbers are new per run): at most 8 pairs.
    first_prefixes=(+49171 +49172 +49174 +49175 +49176 +49177 +49178 +49179)
    second_prefixes=(+49151 +49152 +49157 +49159 +49160 +49162 +49163 +49173)
  else
    # Each run its own mobile prefix (a walk refused in one, numbers spread in another).
    first_prefixes=(+49171 +49172 +49174 +49175 +49176 +49177)
    second_prefixes=(+49178 +49179 +49151 +49152 +49157 +49159)
  fi
  [ "$pairs" -le "${#first_prefixes[@]}" ] || { echo "--$only takes at most ${#first_prefixes[@]} pairs" >&2; exit 1; }
  for i in $(seq 1 "$pairs"); do
    first="${first_prefixes[$((i - 1))]}" second="${second_prefixes[$((i - 1))]}"
    if [ "$only" = rules ]; then
      load "a-$i" verify --model closed --concurrency "$buyers" --duration "$long" --phone-prefix "$first"
      bench_key="$off_key" load "b-$i" verify --model closed --concurrency "$buyers" --duration "$long" --phone-prefix "$second"
    else
      bench_key="$attack_key" load "a-$i" attack --model open --rate 0.1 --duration "$long" \
        --phone-prefix +49173 --pump-prefix "$first" --pump-concurrency 64
      load "b-$i" attack --model open --rate 0.1 --duration "$long" \
        --phone-prefix +49173 --pump-prefix "$second" --pump-concurrency 64 --pump-spread
    fi
  done
  python3 - "$work" "$pairs" "$only" <<'PY'
import json, os, statistics, sys
work, pairs, only = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def run(name):
    with open(os.path.join(work, name + ".json")) as f:
        r = json.load(f)
    with open(os.path.join(work, name + ".pg-cpu")) as f:
        pg = float(f.read())
    count = max(r["pumping"]["starts"] if only == "refusals" else r["flows_completed"], 1)
    cpu = 1000 * (r.get("service") or {}).get("cpu_seconds", 0) / count
    return r, cpu, 1000 * pg / count
ratios = []
if only == "rules":
    print("CPU ms: per completed flow, the service's own and PostgreSQL's")
    print(f"{'pair':>4} {'on flows/s':>10} {'off flows/s':>11} {'ratio':>6} {'on CPU ms':>9} {'off CPU ms':>10} {'on PG ms':>8} {'off PG ms':>9} {'errors':>6}")
else:
    print("CPU ms: the service's own, per start")
    print(f"{'pair':>4} {'refused ms':>10} {'refused':>8} {'served ms':>9} {'served':>7} {'ratio':>6}")
for i in range(1, pairs + 1):
    (a, a_cpu, a_pg), (b, b_cpu, b_pg) = run(f"a-{i}"), run(f"b-{i}")
    if only == "rules":
        ratios.append(a["flows_per_second"] / max(b["flows_per_second"], 1e-9))
        errors = sum(a["errors"].values()) + sum(b["errors"].values())
        print(f"{i:>4} {a['flows_per_second']:>10.0f} {b['flows_per_second']:>11.0f} {ratios[-1]:>6.2f} {a_cpu:>9.3f} {b_cpu:>10.3f} {a_pg:>8.3f} {b_pg:>9.3f} {errors:>6}")
    else:
        ratios.append(a_cpu / max(b_cpu, 1e-9))
        print(f"{i:>4} {a_cpu:>10.3f} {a['pumping']['refused']:>8} {b_cpu:>9.3f} {b['pumping']['sent']:>7} {ratios[-1]:>6.3f}")
# The median of an even count is the mean of the middle two (the upper one alone flatters a
# ratio that should be high).
median, low, high = statistics.median(ratios), min(ratios), max(ratios)
if only == "rules":
    print(f"rules on / off: median {median:.2f}, min {low:.2f}, max {high:.2f} (target >= 0.9)")
else:
    print(f"refused / served start: median {median:.3f}, min {low:.3f}, max {high:.3f} (target <= 0.333)")
PY
  exit 0
fi
load verify-closed verify --model closed --concurrency 64 --duration "$long"
bench_key="$off_key" load verify-rules-off verify --model closed --concurrency 64 --duration "$long" --phone-prefix +49173
load verify-open verify --model open --rate 600 --duration "$long" --phone-prefix +49152
load mixed mixed --model closed --concurrency 32 --duration 10 --phone-prefix +49157 --expiry-wait 7
load gate gate --model closed --concurrency 32 --duration 10 --phone-prefix +49155
load verify-memory verify --model closed --concurrency 64 --duration "$memory" --phone-prefix +49159
# SMS pumping beside normal buyers, with the default fraud rules: how many refusals per second
# the service absorbs while the buyers' p99 stays under 50 ms, and a refusal's cost.
bench_key="$attack_key" load attack attack --model open --rate 100 --duration "$long" \
  --phone-prefix +49171 --pump-prefix +49177 --pump-rate 2000
# A refused start's cost against a served start's, both with the default rules and both
# saturated (64 pumpers, each starting again once answered, as the closed verify runs): a
# walk through one prefix, refused; then numbers spread as buyers' are, served (the bench
# brand's rules let them through).
bench_key="$attack_key" load refusals attack --model open --rate 0.1 --duration "$long" \
  --phone-prefix +49172 --pump-prefix +49178 --pump-concurrency 64
load served-starts attack --model open --rate 0.1 --duration "$long" \
  --phone-prefix +49172 --pump-prefix +49163 --pump-concurrency 64 --pump-spread
kill "$service"; wait "$service" 2>/dev/null || true

# 3. The embedded default: SQLite, one instance.
start_service "sqlite://$work/data-sqlite/orderguard.db?mode=rwc" sqlite
load sqlite-verify verify --model closed --concurrency 64 --duration "$long" --phone-prefix +49160
kill "$service"; wait "$service" 2>/dev/null || true

# 3b. The same verify through the SMPP provider: the test SMSC (the npm package smpp's server,
#     installed by tests/run.sh) takes the submits, sends delivery receipts, and forwards each
#     message to the load tool's sink, where the buyer reads the code.
if [ -d target/npm/node_modules/smpp ] && command -v node >/dev/null; then
  NODE_PATH=target/npm/node_modules node tests/smpp/server.js \
    '{"system_id": "bench", "password": "bench", "port": 19102, "detached": true, "forward": "http://127.0.0.1:19100/sms"}' \
    >"$work/smsc.log" 2>&1 &
  smsc=$!
  pids+=("$smsc")
  for _ in $(seq 1 50); do grep -q smpp "$work/smsc.log" && break; sleep 0.1; done
  psql "$pg" -qc "CREATE DATABASE ${service_db}_smpp" >/dev/null
  start_service "$base/${service_db}_smpp" smpp "$smpp_providers"
  for _ in $(seq 1 100); do curl -s http://127.0.0.1:18080/metrics | grep -q 'smpp_session_up{provider="smsc"} 1' && break; sleep 0.1; done
  load smpp-verify verify --model closed --concurrency 64 --duration "$long" --phone-prefix +49162
  kill "$service"; wait "$service" 2>/dev/null || true
  kill "$smsc"; wait "$smsc" 2>/dev/null || true
  psql "$pg" -qc "DROP DATABASE IF EXISTS ${service_db}_smpp WITH (FORCE)" >/dev/null 2>&1 || true
else
  echo "no test SMSC (run bash tests/run.sh once): the SMPP run is left out" >&2
fi

tps_after="$(bound after)"

# 4. The relay, outbox → the test ClickHouse.
echo "relay…" >&2
bash bench/relay.sh --events 500000 --relays 2 --json 2>/dev/null | tail -n 1 > "$work/relay.json"

python3 - "$work" "$tps_before" "$tps_after" <<'PY'
import json, os, sys
work, tps_before, tps_after = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
bound_before, bound_after = tps_before / 2, tps_after / 2
bound = min(bound_before, bound_after)
def load(name):
    with open(os.path.join(work, name + ".json")) as f:
        return json.load(f)
print(f"machine: {os.cpu_count()} cores; PostgreSQL, service and load tool on the same machine")
print(f"database bound (pgbench, writes of one flow): before {tps_before:,.0f} transactions/s = {bound_before:,.0f} flows/s, "
      f"after {tps_after:,.0f} = {bound_after:,.0f} flows/s")
print("CPU ms/flow is the service's own CPU time (from /proc) per completed flow: a slower disk")
print("lowers flows/s and the bound together; a slower service raises CPU ms/flow.")
print()
print(f"{'run':<15} {'flows/s':>8} {'vs before':>9} {'vs after':>9} {'CPU ms/flow':>11} {'p50/p99 start ms':>17} {'p50/p99 check ms':>17} {'errors':>7} {'CPU %':>6} {'RSS MB':>7}")
names = ["verify-closed", "verify-rules-off", "verify-open", "mixed", "gate", "verify-memory", "sqlite-verify"]
if os.path.exists(os.path.join(work, "smpp-verify.json")):
    names.append("smpp-verify")
for name in names:
    r = load(name)
    first = r["calls"].get("start") or r["calls"].get("hold_order") or {}
    check = r["calls"].get("check", {})
    errors = sum(r["errors"].values())
    service = r.get("service") or {}
    before = f"{r['flows_per_second'] / bound_before:.2f}" if not name.startswith("sqlite") else "-"
    after = f"{r['flows_per_second'] / bound_after:.2f}" if not name.startswith("sqlite") else "-"
    cpu_ms = 1000 * service.get("cpu_seconds", 0) / max(r.get("flows_completed", 0), 1)
    print(f"{name:<15} {r['flows_per_second']:>8.0f} {before:>9} {after:>9} {cpu_ms:>11.2f} "
          f"{first.get('p50_ms', 0):>8.1f}/{first.get('p99_ms', 0):<8.1f} {check.get('p50_ms', 0):>8.1f}/{check.get('p99_ms', 0):<8.1f}"
          f" {errors:>7} {service.get('cpu_percent', 0):>6.0f} {service.get('rss_mb', 0):>7.0f}")
    if r["errors"]:
        print(f"{'':<15} errors: {r['errors']}")
attack, refusals = load("attack"), load("refusals")
pump = attack["pumping"]
buyers_p99 = max(attack["calls"][call]["p99_ms"] for call in ("start", "check"))
print(f"{'attack':<15} {pump['refused_per_second']:>8.0f} refused/s beside {attack['flows_per_second']:.0f} flows/s; "
      f"buyers' p99 {buyers_p99:.1f} ms; pumped SMS {pump['sent']} of {pump['starts']} ({pump['sent_share'] * 100:.2f} %)")
closed_cpu = (load("verify-closed").get("service") or {}).get("cpu_seconds", 0)
flow_ms = 1000 * closed_cpu / max(load("verify-closed")["flows_completed"], 1)
def per_start(run):
    return 1000 * (run.get("service") or {}).get("cpu_seconds", 0) / max(run["pumping"]["starts"], 1)
served = load("served-starts")
refusal_ms, start_ms = per_start(refusals), per_start(served)
print(f"{'refusal cost':<15} {refusal_ms:.3f} ms CPU per refused start ({refusals['pumping']['refused_per_second']:,.0f}/s, {refusals['pumping']['refused']} of {refusals['pumping']['starts']} refused) "
      f"vs {start_ms:.3f} ms per served start ({served['pumping']['sent']} of {served['pumping']['starts']} served): {refusal_ms / max(start_ms, 1e-9):.2f}; "
      f"vs {flow_ms:.3f} ms per served flow (start + SMS + check): {refusal_ms / max(flow_ms, 1e-9):.2f}")
relay = load("relay")
print(f"{'relay':<15} {relay['events_per_second']:>8.0f} events/s ({relay['distinct_in_clickhouse']} distinct of {relay['events']})")

closed, opened, memory, sqlite = (load(n) for n in ["verify-closed", "verify-open", "verify-memory", "sqlite-verify"])
rules_off = load("verify-rules-off")
rules_ratio = closed["flows_per_second"] / max(rules_off["flows_per_second"], 1e-9)
p99 = max(opened["calls"][call]["p99_ms"] for call in ("start", "check"))
targets = [
    ("verify, closed, 64 buyers: >= 1,200 flows/s", f"{closed['flows_per_second']:,.0f}", closed["flows_per_second"] >= 1200),
    ("verify, closed: >= 0.5 of the pgbench bound (the lower of before and after)", f"{closed['flows_per_second'] / bound:.2f}", closed["flows_per_second"] >= bound / 2),
    ("verify, open, 600 flows/s: p99 of each call < 25 ms", f"{p99:.1f} ms", p99 < 25),
    ("verify with the default fraud rules >= 0.9 of verify with them off", f"{closed['flows_per_second']:,.0f} vs {rules_off['flows_per_second']:,.0f}: {rules_ratio:.2f}", rules_ratio >= 0.9),
    ("relay: >= 50,000 events/s", f"{relay['events_per_second']:,.0f}", relay["events_per_second"] >= 50000),
    ("SQLite: >= 1,500 flows/s", f"{sqlite['flows_per_second']:,.0f}", sqlite["flows_per_second"] >= 1500),
    ("attack: buyers' p99 < 50 ms beside the pumping", f"{buyers_p99:.1f} ms", buyers_p99 < 50),
    ("a refused start costs <= 1/3 of a served start's CPU (both saturated)", f"{refusal_ms / max(start_ms, 1e-9):.2f}", refusal_ms <= start_ms / 3),
    ("RSS after the 60 s run < 100 MB", f"{(memory.get('service') or {}).get('rss_mb', 0):.0f} MB", 0 < (memory.get("service") or {}).get("rss_mb", 0) < 100),
]
print()
print("targets (the issue's; a --quick run is shorter than they assume):")
for name, value, met in targets:
    print(f"  {'met ' if met else 'MISSED'}  {name}: {value}")
PY
