#!/usr/bin/env bash
# The whole test suite, as `make test` runs it:
#   1. the Rust crates' own tests (cargo test: the core, proptest included,
#      and the expressions);
#   2. the release abi3 wheel, built once: the same file serves every
#      supported CPython, so the tests exercise exactly what users install;
#   3. for each supported CPython (3.11, 3.12, 3.13): a fresh virtualenv with
#      that wheel and the newest dependency versions pyproject.toml allows,
#      then the whole pytest suite, with a private PostgreSQL server on
#      127.0.0.1 (installed with apt-get when missing) shared by the runs, one
#      after the other.
#
# Every interpreter runs the full suite, crash tests included. Measured from a
# fresh clone on the 2-core machine CI uses: cargo test plus the release build
# about 4 minutes (cold cache), each interpreter's suite 2 to 3 minutes, about
# 9 to 13 minutes in all, well inside the 30-minute budget, so nothing is cut on
# 3.12/3.13. Should the budget tighten, the crash tests (`-m "not crash"` on
# 3.12/3.13) are the part to drop: they exercise the storage engines and the
# Rust core, which vary least with the Python version.
#
# Interpreters are looked up as pythonX.Y on PATH, then through `pyenv prefix`,
# then installed with apt-get (pythonX.Y-venv) when the distribution offers
# that version. A version that cannot be had is skipped with a loud warning,
# repeated in the summary; the run fails if no interpreter is found at all.
#
#   ITONAMI_TEST_PYTHONS="3.12"   test only these versions
#   VENV=.venv-test               prefix of the virtualenvs (one per version)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHONS=${ITONAMI_TEST_PYTHONS:-3.11 3.12 3.13}
VENV=${VENV:-.venv-test}

warn() {
    {
        echo
        echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        echo "!! WARNING: $*"
        echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        echo
    } >&2
}

# A usable interpreter: the right version, and able to make a virtualenv.
usable() {
    "$1" -c "import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != tuple(map(int, '$2'.split('.'))))" \
        >/dev/null 2>&1
}

find_python() {
    local version=$1 candidate prefix
    # every pythonX.Y on PATH, not only the first: a pyenv shim for a version
    # that is installed but not selected fails, while one later on PATH works
    while read -r candidate; do
        if [ -n "$candidate" ] && usable "$candidate" "$version"; then
            echo "$candidate"
            return 0
        fi
    done < <(type -ap "python$version" 2>/dev/null || true)
    if command -v pyenv >/dev/null 2>&1 && prefix=$(pyenv prefix "$version" 2>/dev/null); then
        candidate="$prefix/bin/python$version"
        if usable "$candidate" "$version"; then
            echo "$candidate"
            return 0
        fi
    fi
    return 1
}

# Install pythonX.Y with apt-get, only where the distribution packages it.
apt_python() {
    local version=$1 sudo=""
    command -v apt-get >/dev/null 2>&1 || return 1
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || return 1
        sudo="sudo -n"
    fi
    if [ -z "${_apt_updated:-}" ]; then
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
        _apt_updated=1
    fi
    apt-cache show "python$version-venv" >/dev/null 2>&1 || return 1
    echo "== installing python$version-venv with apt-get" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$version-venv" >&2
}

declare -A interpreter=()
found=()
missing=()
for version in $PYTHONS; do
    if python=$(find_python "$version") || { apt_python "$version" && python=$(find_python "$version"); }; then
        interpreter[$version]=$python
        found+=("$version")
        echo "== Python $version: $python"
    else
        missing+=("$version")
        warn "no Python $version interpreter could be found or installed: its tests are SKIPPED"
    fi
done
if [ ${#found[@]} -eq 0 ]; then
    echo "none of the Python versions $PYTHONS could be found" >&2
    exit 1
fi

echo "== cargo test (itonami-core, itonami-expr)"
cargo test -p itonami-core -p itonami-expr --quiet

echo "== release wheel (built with Python ${found[0]})"
make --no-print-directory wheel VENV="$VENV-build" PYTHON="${interpreter[${found[0]}]}"
wheel=$(ls dist/itonami-*.whl)

postgres=""
if [ -n "${ITONAMI_TEST_POSTGRES_URL:-}" ]; then
    postgres="given"
elif source .ci/postgres.sh; then
    # stopped by the EXIT trap postgres.sh installs
    postgres="private"
elif [ "${CI:-}" = "true" ]; then
    echo "CI needs PostgreSQL, and no server could be started" >&2
    exit 1
else
    warn "no PostgreSQL server could be started: its tests are SKIPPED"
fi

declare -A result=()
status=0
for version in "${found[@]}"; do
    venv="$VENV-$version"
    echo "== Python $version: fresh virtualenv $venv with the wheel and the newest allowed dependencies"
    rm -rf "$venv"
    "${interpreter[$version]}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q --upgrade "$wheel[dev]"
    echo "== Python $version: pytest"
    started=$SECONDS
    if make --no-print-directory pytest VENV="$venv"; then
        result[$version]="passed"
    else
        result[$version]="FAILED"
        status=1
    fi
    result[$version]+=" in $((SECONDS - started)) s"
done

echo
echo "== summary"
for version in "${found[@]}"; do
    echo "   Python $version: ${result[$version]}"
done
for version in "${missing[@]}"; do
    echo "   Python $version: SKIPPED (no interpreter)"
done
[ -n "$postgres" ] || echo "   PostgreSQL tests: SKIPPED (no server)"
if [ ${#missing[@]} -gt 0 ]; then
    warn "Python ${missing[*]} not tested: no interpreter could be found or installed"
fi
exit "$status"
