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

LOG_TAG=device_runtime
# shellcheck source=ci/device_runtime/staged_archive.sh
source ci/device_runtime/staged_archive.sh

# 1. stage the pieces carried in this call
stage_carried "$SRC" "$STAGE"
[[ $ARCHIVE =~ ^vllm-([0-9]+\.[0-9]+\.[0-9]+)-cp[0-9]+\.tar\.xz$ ]] \
  || die 2 "$MANIFEST names $ARCHIVE, not vllm-<version>-cp<NN>.tar.xz (a manifest of an older prepare.sh?)"
VERSION=${BASH_REMATCH[1]}
TAG=$(runtime_tag "$VERSION")
PREFIX=$(realpath -m "${VLLM_RUNTIME_PREFIX:-/root/$TAG}")
if [[ $MODE == stage ]]; then
  log "staged $((${#PIECES[@]} - ${#MISSING[@]}))/${#PIECES[@]} pieces in $STAGE; still to carry: ${MISSING[*]:-none}"
  is_unpacked "$PREFIX" vllm && log "this build is already installed in $PREFIX"
  exit 0
fi

# 2. reassemble, verify and unpack (skipped when this archive is installed)
if is_unpacked "$PREFIX" vllm; then
  log "$ARCHIVE ($ARCHIVE_SHA) is already installed in $PREFIX"
else
  unpack_staged "$STAGE" "$PREFIX" "$PY" vllm "with --stage-only"
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
