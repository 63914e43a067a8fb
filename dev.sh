#!/usr/bin/env bash
# One entry point for a fresh clone: creates ./.venv if absent, installs everything, then
#   ./dev.sh demo [ARGS]       runs `heimer-mlflow demo ARGS`
#   ./dev.sh test [ARGS]       runs the test suite (pytest ARGS)
#   ./dev.sh test-fast [ARGS]  runs the fast subset (pytest -m "not slow and not server" ARGS)
#   ./dev.sh setup             only the set-up
#   ./dev.sh bench NAME        runs benchmarks/NAME.py
set -euo pipefail
cd "$(dirname "$0")"
VENV="${HEIMER_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[dev.sh] creating virtual environment $VENV" >&2
    "$PY" -m venv "$VENV"
fi
# Reinstall only when the dependency list changed (stamp = hash of pyproject.toml).
stamp="$VENV/.heimer-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[dev.sh] installing heimer-mlflow and its dependencies into $VENV" >&2
    # torch is pinned here: an unpinned torch pulls a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
    echo "$want" > "$stamp"
fi
# The message catalogs: the install compiled them (hatch_build.py); an edited .po is compiled again.
for po in heimer_mlflow/locale/*/LC_MESSAGES/heimer.po; do
    if [ -f "$po" ] && [ ! "${po%.po}.mo" -nt "$po" ]; then
        "$VENV/bin/python" hatch_build.py >/dev/null
        break
    fi
done

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)  exec "$VENV/bin/heimer-mlflow" demo "$@" ;;
    test)  exec "$VENV/bin/python" -m pytest "$@" ;;
    test-fast) exec "$VENV/bin/python" -m pytest -m "not slow and not server" "$@" ;;
    bench) name="$1"; shift; exec "$VENV/bin/python" "benchmarks/$name.py" "$@" ;;
    setup) echo "[dev.sh] environment ready: $VENV" >&2 ;;
    *)     sed -n '2,8p' "$0"; exit 2 ;;
esac
