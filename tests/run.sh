#!/usr/bin/env bash
# The test command: brings up what the tests need on a fresh Debian machine, then runs every test.
#
#   bash tests/run.sh [extra nextest/cargo-test arguments]
#
# PostgreSQL: used if one answers at $ORDERGUARD_TEST_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432/postgres); else an installed cluster is started; else
# Debian's postgresql package is installed (as root) and started. If none of that works the
# script stops with a message: the PostgreSQL tests are never skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[tests/run.sh] %s\n' "$*" >&2; }

export ORDERGUARD_TEST_POSTGRES_URL="${ORDERGUARD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

ensure_psql() {
  command -v psql >/dev/null && return 0
  log "installing the PostgreSQL client (postgresql-client)"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null
}

postgres_answers() {
  psql "$ORDERGUARD_TEST_POSTGRES_URL" -Atqc 'SELECT 1' >/dev/null 2>&1
}

start_installed_cluster() {
  command -v pg_ctlcluster >/dev/null || return 1
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || return 1
  log "starting the installed PostgreSQL $version cluster"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do postgres_answers && return 0; sleep 1; done
  return 1
}

install_postgres() {
  log "no PostgreSQL answers: installing Debian's postgresql package"
  as_root apt-get update -qq || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
  start_installed_cluster || true
  # A fresh Debian cluster asks for passwords over TCP: give the postgres role one and use it.
  as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" || return 1
  export ORDERGUARD_TEST_POSTGRES_URL="postgres://postgres:postgres@127.0.0.1:5432/postgres"
  for _ in $(seq 1 30); do postgres_answers && return 0; sleep 1; done
  return 1
}

ensure_psql || { log "cannot install psql; install postgresql-client and retry"; exit 1; }
if ! postgres_answers && ! start_installed_cluster && ! install_postgres; then
  log "PostgreSQL is required and none could be reached or started at $ORDERGUARD_TEST_POSTGRES_URL."
  log "Start one (or set ORDERGUARD_TEST_POSTGRES_URL) and run this again."
  exit 1
fi
log "PostgreSQL answers at ${ORDERGUARD_TEST_POSTGRES_URL%%@*}@…"
# Each test makes its own database, named after this checkout (og_test_<hash of its path>_…):
# drop those this checkout's earlier runs left behind, never another concurrent run's.
ORDERGUARD_TEST_DB_PREFIX="og_test_$(pwd -P | sha256sum | cut -c1-10)_"
export ORDERGUARD_TEST_DB_PREFIX
for db in $(psql "$ORDERGUARD_TEST_POSTGRES_URL" -Atqc "SELECT datname FROM pg_database WHERE starts_with(datname, '$ORDERGUARD_TEST_DB_PREFIX')"); do
  psql "$ORDERGUARD_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
done

# Headless Chromium and ChromeDriver for the browser tests, from Debian's packages.
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  log "installing chromium and chromium-driver for the browser tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null \
    || { log "cannot install chromium; the browser tests need /usr/bin/chromium and /usr/bin/chromedriver"; exit 1; }
fi
# Prometheus and promtool for the dashboard tests (a real Prometheus scrapes the service; the
# alert rules are checked and unit-tested by promtool), from Debian's prometheus package.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  log "installing Debian's prometheus package (prometheus, promtool) for the dashboard tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { log "cannot install prometheus; the dashboard tests need prometheus and promtool"; exit 1; }
fi
rm -rf test-output

# The tests' npm peers (pinned by tests/npm/package-lock.json), run with the machine's Node.js:
# the SMSC (the package smpp's server) and axe-core (accessibility checks in Chromium).
# Installed under target/npm, again only when the lock file changes.
command -v node >/dev/null && command -v npm >/dev/null \
  || { log "the SMPP and accessibility tests need Node.js and npm (the machine's, or Debian's nodejs and npm packages)"; exit 1; }
if ! cmp -s tests/npm/package-lock.json target/npm/package-lock.json 2>/dev/null \
  || ! [ -d target/npm/node_modules/smpp ] || ! [ -f target/npm/node_modules/axe-core/axe.min.js ]; then
  log "installing the npm packages smpp and axe-core into target/npm"
  rm -rf target/npm && mkdir -p target/npm
  cp tests/npm/package.json tests/npm/package-lock.json target/npm/
  (cd target/npm && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
export ORDERGUARD_TEST_NODE_MODULES="$PWD/target/npm/node_modules"

# The test ClickHouse: the real engine from PyPI (chdb-core) behind tests/clickhouse/server.py.
ORDERGUARD_TEST_PYTHON="$(bash tests/clickhouse/setup.sh)"
export ORDERGUARD_TEST_PYTHON

if cargo nextest --version >/dev/null 2>&1; then
  profile=default
  [ "${CI:-}" = true ] && profile=ci
  # Two test threads per core: the tests wait on services far more than they compute.
  cargo nextest run --profile "$profile" --no-fail-fast --test-threads "$(( $(nproc) * 2 ))" "$@"
else
  log "cargo-nextest not found: running the same tests with cargo test"
  cargo test --no-fail-fast --lib --test api "$@" -- --test-threads "$(( $(nproc) * 2 ))"
fi
