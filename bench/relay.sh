#!/usr/bin/env bash
# Relay throughput: events per second from the outbox (PostgreSQL) to ClickHouse (the real
# engine in chdb-core behind tests/clickhouse/server.py), with the release build.
#
#   bash bench/relay.sh [orderguard bench relay options, e.g. --events 500000 --relays 2]
#
# Needs what the README's test command sets up (PostgreSQL on 127.0.0.1:5432, python3).
set -euo pipefail
cd "$(dirname "$0")/.."

pg="${ORDERGUARD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
python="$(bash tests/clickhouse/setup.sh)"
cargo build --release --quiet

workdir="$(mktemp -d)"
database="og_bench_$(date +%s)_$$"
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  psql "$pg" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$workdir"
}
trap cleanup EXIT

"$python" tests/clickhouse/server.py --data "$workdir/chdb" > "$workdir/port" &
server_pid=$!
for _ in $(seq 1 100); do grep -q LISTENING "$workdir/port" 2>/dev/null && break; sleep 0.1; done
port="$(awk '/LISTENING/ {print $2}' "$workdir/port")"
[ -n "$port" ] || { echo "the test ClickHouse did not start" >&2; exit 1; }

psql "$pg" -qc "CREATE DATABASE $database" >/dev/null
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; ClickHouse: chdb-core $("$python" -c 'import chdb; print(chdb.__version__)')"
target/release/orderguard bench relay \
  --database-url "${pg%/*}/$database" \
  --clickhouse-url "http://127.0.0.1:$port" \
  "$@"
