#!/bin/sh
# Build cdc-migrator's packages, and install the wheel the way users do.
#
#   scripts/package.sh build DIST          the sdist and the wheel of this checkout, into DIST
#   scripts/package.sh install DIST VENV   a new virtual environment at VENV with DIST's wheel,
#                                          then the installed command is run once
#
# The Dockerfile's Python steps are exactly these two commands, and the test suite runs them
# the same way outside Docker (tests/test_install.py): a green CI means they build, install
# and run. PYTHON picks the interpreter (default python3).
set -eu

python=${PYTHON:-python3}
usage() { echo "usage: $0 build DIST | install DIST VENV" >&2; exit 2; }

case "${1:-}" in
  build)
    [ $# -eq 2 ] || usage
    root=$(cd "$(dirname "$0")/.." && pwd)
    "$python" -c "import build" 2>/dev/null || "$python" -m pip install -q build
    # An sdist first, then the wheel built from that sdist: what a source install gets.
    "$python" -m build --outdir "$2" "$root"
    ;;
  install)
    [ $# -eq 3 ] || usage
    set -- "$2"/cdc_migrator-*.whl "$3"
    [ -f "$1" ] || { echo "package.sh: no cdc_migrator wheel in $(dirname "$1")" >&2; exit 1; }
    "$python" -m venv "$2"
    "$2/bin/pip" install -q "$1"
    "$2/bin/cdc-migrator" --version
    "$2/bin/python" -m cdc_migrator --help >/dev/null
    ;;
  *)
    usage ;;
esac
