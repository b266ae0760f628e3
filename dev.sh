#!/usr/bin/env bash
# One entry point for people and CI.
#   ./dev.sh run    set up (idempotent) and run the demo fleet on localhost (store, workers, router, three trained
#                   adapters), no external services; it keeps serving until Ctrl-C (`adapterfleet up`: no demo)
#   ./dev.sh test   set up and run every test (starts its own redis-server and S3 server on free ports)
#   ./dev.sh setup  only set up .venv
#   ./dev.sh protos regenerate the checked-in gRPC stubs
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv

setup() {
  local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ -f "$stamp" ]; then return; fi
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "adapterfleet needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1): set PYTHON=python3.11 (or newer)" >&2
    return 1
  fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  # torch first, pinned: 2.13.0 resolves to the CPU wheel; a bare `torch` would pull a multi-GB CUDA build.
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e ".[test,peft]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
}

check_protos() {
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/adapterfleet/v1"
  PYTHON="$VENV/bin/python" protos/generate.sh "$tmp"
  for f in "$tmp"/adapterfleet/v1/*.py "$tmp"/adapterfleet/v1/*.pyi; do
    if ! cmp -s "$f" "protos/adapterfleet/v1/$(basename "$f")"; then
      echo "generated stubs are stale: run ./dev.sh protos and commit the result ($(basename "$f"))" >&2
      rm -rf "$tmp"; return 1
    fi
  done
  rm -rf "$tmp"
}

# mypy over the package as installed: a link tree of the folders that pyproject's package-dir maps into
# `adapterfleet` (mypy cannot follow the editable install's import hook).
typecheck() {
  local tree=build/typecheck
  rm -rf "$tree"
  "$VENV/bin/python" - "$tree" <<'PY'
import os, sys, tomllib
tree = sys.argv[1]
dirs = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]
for pkg, src in sorted(dirs.items()):  # "adapterfleet" first: the others link inside it
    dst = os.path.join(tree, *pkg.split("."))
    if pkg == "adapterfleet":
        os.makedirs(dst)
        for name in os.listdir(src):
            os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(dst, name))
    else:
        os.symlink(os.path.abspath(src), dst)
PY
  (cd "$tree" && "$OLDPWD/$VENV/bin/mypy" --config-file "$OLDPWD/pyproject.toml" adapterfleet)
}

case "${1:-}" in
  setup) setup ;;
  protos) setup; PYTHON="$VENV/bin/python" protos/generate.sh ;;
  run)
    setup
    shift
    exec "$VENV/bin/adapterfleet" demo "$@"
    ;;
  test)
    setup
    shift
    check_protos
    "$VENV/bin/ruff" check -q .   # the rules are in pyproject.toml ([tool.ruff.lint])
    typecheck
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: that is a failure here" >&2; exit 1; fi
    exit "$rc"
    ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
