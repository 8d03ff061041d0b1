#!/usr/bin/env bash
# The whole test suite: every test on SQLite, then the API tests again on
# PostgreSQL (one fresh database per test, created on the server that
# TEST_DATABASE_URL names; default postgres://postgres@127.0.0.1:5432/test).
#
# Without a PostgreSQL server the second pass is skipped, and one line says
# so, unless REQUIRE_POSTGRES=1 (CI sets it): then the script fails.
# Extra arguments go to both `cargo test` runs (e.g. --locked).
set -euo pipefail
cd "$(dirname "$0")/.."

pg_url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

echo "== tests on SQLite"
env -u TEST_DATABASE_URL cargo test --workspace "$@"

# host[:port] of the URL: after the scheme and any user@, before /db or ?.
authority="${pg_url#*://}"
authority="${authority##*@}"
authority="${authority%%[/?]*}"
host="${authority%%:*}"
port=5432
if [[ "$authority" == *:* ]]; then port="${authority##*:}"; fi

if (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null; then
  echo "== tests on PostgreSQL at ${host}:${port}"
  TEST_DATABASE_URL="$pg_url" cargo test --workspace --test api "$@"
elif [[ "${REQUIRE_POSTGRES:-0}" == 1 ]]; then
  echo "FAILED: the PostgreSQL pass is required (REQUIRE_POSTGRES=1) but nothing answers at ${host}:${port}" >&2
  exit 1
else
  echo "PostgreSQL pass skipped: nothing answers at ${host}:${port} (start PostgreSQL or set TEST_DATABASE_URL to run it)"
fi
