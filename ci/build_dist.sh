#!/usr/bin/env bash
# Build the sdist and the wheel and check them: what the publish workflow
# (ci/workflows/publish.yml) does before uploading, and what `make test` runs.
#
#   bash ci/build_dist.sh [--tag vX.Y.Z] [--release]
#
# Output: .cache/dist/ (DIST_DIR). `python -m build` makes the sdist, then the
# wheel from the unpacked sdist, so a wheel at all proves the sdist rebuilds;
# it builds in an isolated environment with setuptools from the index, as on
# any user's machine. Then `twine check --strict` (what PyPI renders and
# accepts) and ci/check_dist.py (version, metadata, contents).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DIST_DIR=${DIST_DIR:-.cache/dist}

rm -rf "$DIST_DIR"
mkdir -p "$DIST_DIR"
# Build from a copy of what git tracks: an untracked file or a stale
# build/ or *.egg-info of this checkout cannot leak into the sdist.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [[ -f $f ]] && printf '%s\0' "$f"; done |
    xargs -0 cp --parents -t "$SRC"
else
  cp -r . "$SRC"
fi
"$PYTHON" -m build --outdir "$DIST_DIR" "$SRC" > "$DIST_DIR/build.log" 2>&1 || {
  tail -n 40 "$DIST_DIR/build.log"; echo "build_dist: python -m build failed"; exit 1; }
"$PYTHON" -m twine check --strict "$DIST_DIR"/*.tar.gz "$DIST_DIR"/*.whl
"$PYTHON" ci/check_dist.py "$DIST_DIR" "$@"
