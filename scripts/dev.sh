#!/usr/bin/env bash
# The README's two commands:
#   scripts/dev.sh demo   - the seed's cache-invalidation pipeline on throwaway local servers
#   scripts/dev.sh test   - the whole test suite (real MariaDB + Redis started by the tests)
# Each installs what it needs: apt packages (mariadb-server, redis-server, nodejs, npm) where missing,
# a virtualenv in .venv with the Python dependencies, and the Cython build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="${DELTAFORGE_VENV:-$ROOT/.venv}"

need_apt=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need_apt+=(redis-server)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing with apt: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.deltaforge-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] || \
   [ -n "$(find _core \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \) -newer "$stamp" 2>/dev/null)" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"

cmd="${1:-help}"; shift || true
case "$cmd" in
  demo)
    exec deltaforge demo "$@"
    ;;
  test)
    # Full suite on the compiled hot path (a missing or broken extension is fatal there, so a failed
    # build cannot pass on the twins), then the unit tests again on the pure-Python twins.
    set +e
    DELTAFORGE_REQUIRE_EXT=1 python -m pytest "$@"
    rc=$?
    if [ $rc -eq 0 ]; then
      DELTAFORGE_NO_EXT=1 python -m pytest -m "not integration and not chaos" -q "$@"
      rc=$?
    fi
    [ $rc -eq 5 ] && { echo "no tests ran"; rc=1; }
    exit $rc
    ;;
  bench)
    exec deltaforge bench "$@"
    ;;
  lint)
    ruff check deltaforge tests && mypy deltaforge
    ;;
  *)
    echo "usage: scripts/dev.sh demo|test|bench|lint" >&2
    exit 2
    ;;
esac
