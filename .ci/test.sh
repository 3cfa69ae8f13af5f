#!/usr/bin/env bash
# The whole test suite, as `make test` runs it:
#   1. the Rust core's own tests (cargo test, proptest included);
#   2. the release abi3 wheel, built and installed into a fresh virtualenv,
#      so the tests exercise exactly what users `pip install`;
#   3. pytest against that install, with a private PostgreSQL server on
#      127.0.0.1 (installed with apt-get when missing) for the PostgreSQL
#      backend's conformance and crash tests.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-test}
rm -rf "$VENV"

echo "== cargo test (itonami-core)"
cargo test -p itonami-core --quiet

echo "== release wheel into a fresh virtualenv ($VENV)"
make --no-print-directory install VENV="$VENV"

echo "== pytest"
if [ -n "${ITONAMI_TEST_POSTGRES_URL:-}" ]; then
    make --no-print-directory pytest VENV="$VENV"
elif bash .ci/postgres.sh run true >/dev/null 2>&1 || [ "${CI:-}" = "true" ]; then
    bash .ci/postgres.sh run make --no-print-directory pytest VENV="$VENV"
else
    echo "warning: no PostgreSQL server could be started; its tests will be skipped" >&2
    make --no-print-directory pytest VENV="$VENV"
fi
