#!/usr/bin/env bash
# Install the vLLM runtime built by prepare.sh, ON THE GPU DEVICE, from the repo
# root (README.md). Each device call carries MANIFEST.sha256 and one piece of
# .cache/device_runtime/pieces-vllm026/ (VLLM_RUNTIME=0.24.0: pieces-vllm024/):
#
#   bash ci/device_runtime/install_on_device.sh --stage-only   # every call but the last
#   bash ci/device_runtime/install_on_device.sh                # the last call
#
# The manifest names the archive (vllm-<version>-cp312.tar.xz), hence the version.
# Staging verifies the carried piece (sha256) and copies it to $VLLM_RUNTIME_STAGE.
# Installing also checks that every piece is staged, reassembles and verifies the
# archive, unpacks it to $VLLM_RUNTIME_PREFIX/site (default /root/vllm026 for 0.26.0),
# makes the device's python3 see it
# (a .pth file, which also defaults VLLM_USE_FLASHINFER_SAMPLER=0: FlashInfer is
# not carried), registers this repo's plugin (editable), writes a `vllm` launcher
# and runs ci/device_runtime/smoke.py. Idempotent: an installed archive with the
# same sha256 is not unpacked again.
#
# Exit status: 0 ok, 1 smoke failed, 2 pieces missing or damaged, 3 install failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
runtime_tag() { awk -F. '{printf "vllm%d%02d", $1, $2}' <<<"$1"; } # 0.26.0 -> vllm026
SRC=${VLLM_RUNTIME_PIECES:-.cache/device_runtime/pieces-$(runtime_tag "${VLLM_RUNTIME:-0.26.0}")}
STAGE=$(realpath -m "${VLLM_RUNTIME_STAGE:-/root/stage}")
PY=${PYTHON:-python3}
MODE=install
case ${1:-} in
  --stage-only) MODE=stage ;;
  "") ;;
  *) echo "usage: $0 [--stage-only]" >&2 && exit 3 ;;
esac

log() { printf '[device_runtime %3ds] %s\n' "$SECONDS" "$*"; }
die() {
  local code=$1
  printf '[device_runtime] ERROR: %s\n' "$2" >&2
  shift 2
  (($#)) && printf '%s\n' "$@" >&2
  exit "$code"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$STAGE"
# The carried manifest names this build; staged pieces of another build go.
if [[ -f $SRC/MANIFEST.sha256 ]]; then
  if [[ -f $STAGE/MANIFEST.sha256 ]] && ! cmp -s "$SRC/MANIFEST.sha256" "$STAGE/MANIFEST.sha256"; then
    log "new manifest: removing the staged pieces of another build"
    rm -f "$STAGE"/*.part[0-9]*
  fi
  cp "$SRC/MANIFEST.sha256" "$STAGE/MANIFEST.sha256"
fi
MANIFEST=$STAGE/MANIFEST.sha256
[[ -f $MANIFEST ]] || die 2 "no manifest: carry $SRC/MANIFEST.sha256 in every call"
ARCHIVE=$(awk '$2 !~ /\.part[0-9]+$/ {print $2}' "$MANIFEST")
ARCHIVE_SHA=$(awk '$2 !~ /\.part[0-9]+$/ {print $1}' "$MANIFEST")
mapfile -t PIECES < <(awk '$2 ~ /\.part[0-9]+$/ {print $2}' "$MANIFEST")
[[ -n $ARCHIVE && ${#PIECES[@]} -gt 0 ]] || die 2 "$MANIFEST is not a prepare.sh manifest"
[[ $ARCHIVE =~ ^vllm-([0-9]+\.[0-9]+\.[0-9]+)-cp[0-9]+\.tar\.xz$ ]] \
  || die 2 "$MANIFEST names $ARCHIVE, not vllm-<version>-cp<NN>.tar.xz (a manifest of an older prepare.sh?)"
VERSION=${BASH_REMATCH[1]}
TAG=$(runtime_tag "$VERSION")
PREFIX=$(realpath -m "${VLLM_RUNTIME_PREFIX:-/root/$TAG}")
want_sha() { awk -v n="$1" '$2 == n {print $1}' "$MANIFEST"; }

# 1. stage the pieces carried in this call
shopt -s nullglob
for f in "$SRC"/*.part[0-9]*; do
  name=${f##*/}
  want=$(want_sha "$name")
  [[ -n $want ]] || die 2 "$name is not in $MANIFEST (a piece of another build?)"
  got=$(sha "$f")
  [[ $got == "$want" ]] || die 2 "carried $name has sha256 $got, the manifest says $want: carry it again"
  cp "$f" "$STAGE/$name.tmp"
  mv "$STAGE/$name.tmp" "$STAGE/$name"
  log "staged $name ($(stat -c %s "$f") bytes)"
done

installed() { [[ -f $PREFIX/.installed && "$(cat "$PREFIX/.installed")" == "$ARCHIVE_SHA" && -d $PREFIX/site/vllm ]]; }
missing=()
for name in "${PIECES[@]}"; do [[ -f $STAGE/$name ]] || missing+=("$name"); done
if [[ $MODE == stage ]]; then
  log "staged $((${#PIECES[@]} - ${#missing[@]}))/${#PIECES[@]} pieces in $STAGE; still to carry: ${missing[*]:-none}"
  installed && log "this build is already installed in $PREFIX"
  exit 0
fi

# 2. reassemble, verify and unpack (skipped when this archive is installed)
if installed; then
  log "$ARCHIVE ($ARCHIVE_SHA) is already installed in $PREFIX"
else
  if ((${#missing[@]})); then
    die 2 "pieces not staged: ${missing[*]}" \
      "  ($STAGE lives only while the device stays warm: make the staging calls back to back," \
      "   each carrying $SRC/MANIFEST.sha256 and one piece, with --stage-only; then this call)"
  fi
  bad=()
  for name in "${PIECES[@]}"; do
    [[ "$(sha "$STAGE/$name")" == "$(want_sha "$name")" ]] || bad+=("$name")
  done
  if ((${#bad[@]})); then
    (cd "$STAGE" && rm -f "${bad[@]}")
    die 2 "staged pieces damaged (removed, carry them again): ${bad[*]}"
  fi
  log "reassembling $ARCHIVE from ${#PIECES[@]} pieces"
  (cd "$STAGE" && cat "${PIECES[@]}") >"$STAGE/$ARCHIVE"
  [[ "$(sha "$STAGE/$ARCHIVE")" == "$ARCHIVE_SHA" ]] || die 2 "reassembled $ARCHIVE: sha256 mismatch"
  rm -rf "$PREFIX/new" "$PREFIX/site" "$PREFIX/.installed"
  mkdir -p "$PREFIX/new"
  log "unpacking into $PREFIX/site"
  if command -v xz >/dev/null; then
    xz -dc -T0 "$STAGE/$ARCHIVE" | tar -x -C "$PREFIX/new" || die 3 "unpacking failed"
  else
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2], filter="fully_trusted")' \
      "$STAGE/$ARCHIVE" "$PREFIX/new" || die 3 "unpacking failed"
  fi
  mv "$PREFIX/new/site" "$PREFIX/site"
  rmdir "$PREFIX/new"
  rm -f "$STAGE/$ARCHIVE"
  # The bundle has no .pyc (built on another Python); compile them on all cores now
  # rather than one module at a time in every first import.
  log "compiling .pyc"
  "$PY" -m compileall -q -j0 "$PREFIX/site" >/dev/null || log "compileall reported errors (ignored)"
  echo "$ARCHIVE_SHA" >"$PREFIX/.installed"
fi

# 3. make the device's python see it: a .pth in its site-packages (appended to
#    sys.path, after the device's own packages, which the bundle never repeats)
#    (site.addsitedir also runs the bundle's own .pth files: nvidia_cutlass_dsl_packages.pth
#    puts the CuTe-DSL's dsl_packages/ (cutlass, iket) on sys.path)
PURELIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PTH=${TAG}_runtime.pth
PTH_LINE="import os, site; os.environ.setdefault('VLLM_USE_FLASHINFER_SAMPLER', '0'); site.addsitedir('$PREFIX/site')"
# PYTHONPATH entries get no .pth processing: name the CuTe-DSL's folder there too
DSL=$PREFIX/site/nvidia_cutlass_dsl/dsl_packages
[[ -d $DSL ]] && DSL_PATH="$DSL:" || DSL_PATH=
cat >"$PREFIX/env.sh" <<EOF
# Only needed where $PURELIB/$PTH could not be written.
export PYTHONPATH=$DSL_PATH$PREFIX/site\${PYTHONPATH:+:\$PYTHONPATH}
export VLLM_USE_FLASHINFER_SAMPLER=\${VLLM_USE_FLASHINFER_SAMPLER:-0}
export PATH=$PREFIX/bin:\$PATH
EOF
# another runtime's .pth (an earlier install on this machine) would put a second vLLM on sys.path
for other in "$PURELIB"/vllm0[0-9][0-9]_runtime.pth; do
  if [[ -e $other && ${other##*/} != "$PTH" ]]; then
    rm -f "$other"
    log "removed ${other##*/} (another vLLM runtime)"
  fi
done
if echo "$PTH_LINE" >"$PURELIB/$PTH" 2>/dev/null; then
  log "wrote $PURELIB/$PTH (sys.path += $PREFIX/site; VLLM_USE_FLASHINFER_SAMPLER defaults to 0)"
else
  log "WARNING: $PURELIB is not writable: 'source $PREFIX/env.sh' before using vLLM"
  # shellcheck disable=SC1091
  source "$PREFIX/env.sh"
fi

# 4. this repo's plugin, editable: registers the vllm.general_plugins entry point
if PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip install -q --no-deps --no-build-isolation \
  --no-index -e "$REPO" >"$PREFIX/plugin_install.log" 2>&1; then
  log "plugin: pip install -e $REPO"
else
  log "plugin: pip install -e failed (tail of $PREFIX/plugin_install.log below); registering by hand"
  tail -n 5 "$PREFIX/plugin_install.log"
  "$PY" - "$REPO" "$PREFIX/site" <<'PY' || die 3 "could not register the plugin"
import sys, tomllib
from pathlib import Path

repo, site = Path(sys.argv[1]), Path(sys.argv[2])
project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
name, version = project["name"], project["version"]
dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
dist.mkdir(exist_ok=True)
(dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
groups = project.get("entry-points", {})
(dist / "entry_points.txt").write_text(
    "".join(
        f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for g, eps in groups.items()
    )
)
(site / f"{name.replace('-', '_')}.pth").write_text(f"{repo}\n")
print(f"registered {name} {version} from {repo} in {dist}")
PY
fi

# 5. a `vllm` launcher next to python3 (as pip would put it), else in $PREFIX/bin
BIN=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")
[[ -w $BIN ]] || BIN=$PREFIX/bin
mkdir -p "$BIN"
if [[ ! -e $BIN/vllm ]] || grep -qE 'vllm0[0-9]+-runtime' "$BIN/vllm"; then
  printf '#!%s\n# '"$TAG"'-runtime launcher (ci/device_runtime/install_on_device.sh)\nimport sys\nfrom vllm.entrypoints.cli.main import main\nsys.exit(main())\n' \
    "$("$PY" -c 'import sys; print(sys.executable)')" >"$BIN/vllm"
  chmod +x "$BIN/vllm"
  log "launcher: $BIN/vllm"
fi

# 6. smoke
log "smoke"
status=0
"$PY" -c "import vllm, vllm._C_stable_libtorch, vllm._moe_C_stable_libtorch; from vllm.entrypoints.openai import api_server; print('vllm', vllm.__version__)" \
  || { status=1; echo "FAILED: import vllm + its CUDA extensions + api_server"; }
"$PY" -c "from importlib.metadata import entry_points; print(entry_points(group='vllm.general_plugins'))" \
  || { status=1; echo "FAILED: entry points"; }
"$PY" "$REPO/ci/device_runtime/smoke.py" --expect-version "$VERSION" || { status=1; echo "FAILED: ci/device_runtime/smoke.py"; }
[[ -x "$(head -1 "$BIN/vllm" | cut -c3-)" ]] || { status=1; echo "FAILED: $BIN/vllm: bad interpreter"; }
if ((status)); then
  log "FAILED (see above)"
else
  log "OK: vLLM $VERSION runtime ready (python3 -m vllm.entrypoints.openai.api_server ..., $BIN/vllm bench serve ...)"
fi
exit "$status"
