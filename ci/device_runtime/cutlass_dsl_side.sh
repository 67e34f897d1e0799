#!/usr/bin/env bash
# vLLM 0.34.0's CuTe-DSL stack (nvidia-cutlass-dsl 4.8.0) as a SIDE SITE beside
# the 0.26.0 runtime (README.md, last section). Both 4.6.0 and 4.8.0 install the
# top-level `cutlass` package, so one process sees one of them: the side site is
# unpacked into its own folder and named first on PYTHONPATH only in the
# processes that want it (benchmarks/kernel/bench_router_device.sh anchors-ll034).
#
#   bash ci/device_runtime/cutlass_dsl_side.sh build     # HERE: download, assemble, pack,
#                                                        # split -> .cache/device_runtime/pieces-cutlass-dsl-480/
#   bash ci/device_runtime/cutlass_dsl_side.sh stage     # ON THE DEVICE: every call but the last
#   bash ci/device_runtime/cutlass_dsl_side.sh install   # ON THE DEVICE: the last call
#
# build downloads (once, into .cache/device_runtime/downloads/cutlass-dsl-480/) the
# cp312 wheels of PINS below (what vLLM 0.34.0 pins for the CuTe-DSL path; checked
# against $LL_SOURCE/WHEEL-METADATA when that is there), checks that their other
# requirements are met by the 0.26.0 runtime's pins or the device's packages,
# installs them with one `pip install --no-deps --target` (the four CuTe-DSL wheels
# all write into nvidia_cutlass_dsl/), removes build()'s trim list, packs tar | xz -9e, splits it
# into pieces of at most PIECE_BYTES with MANIFEST.sha256 (one line per piece and
# one for the archive, as prepare.sh) and prints the device calls. A re-run with
# the same inputs downloads and builds nothing.
#
# stage verifies each carried piece (in $CUTLASS_SIDE_PIECES, default the pieces folder
# above) against the carried manifest and copies it to
# $CUTLASS_SIDE_STAGE (/root/stage-cutlass480). install stages too, then checks
# every piece, reassembles and verifies the archive, unpacks it to
# $CUTLASS_SIDE_PREFIX/site (/root/cutlass480/site), writes
# $CUTLASS_SIDE_PREFIX/env.sh and runs a smoke that requires `import cutlass` to be
# 4.8.0 from the side site with that PYTHONPATH (CUTLASS_SIDE_IMPORT=0 skips the
# import itself, for a rehearsal on a Python other than 3.12). Idempotent.
#
# Exit status: 0 ok, 1 smoke failed, 2 pieces missing or damaged, 3 install
# failed or bad usage (as install_on_device.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

HERE=ci/device_runtime
ROOT=${DEVICE_RUNTIME_DIR:-.cache/device_runtime}
TAG=cutlass-dsl-480
# vLLM 0.34.0's pins (its WHEEL-METADATA: nvidia-cutlass-dsl[cu13]==4.8.0,
# apache-tvm-ffi==0.1.11, quack-kernels==0.6.5) and the wheels nvidia-cutlass-dsl
# 4.8.0[cu13] pulls in (-libs-base, -libs-core via -libs-base, -libs-cu13). The
# 0.26.0 runtime has 4.6.0, 0.1.10 and 0.6.1 of these (quack 0.6.1 pins
# nvidia-cutlass-dsl==4.6.0; 0.6.5 wants >=4.7): the side site carries all six so
# that nothing of the CuTe-DSL path mixes versions.
PINS=(nvidia-cutlass-dsl==4.8.0 nvidia-cutlass-dsl-libs-base==4.8.0
  nvidia-cutlass-dsl-libs-core==4.8.0 nvidia-cutlass-dsl-libs-cu13==4.8.0
  apache-tvm-ffi==0.1.11 quack-kernels==0.6.5)
DSL_VERSION=4.8.0
NAME=cutlass-dsl-$DSL_VERSION-cp312.tar.xz
SRC=${CUTLASS_SIDE_PIECES:-$ROOT/pieces-$TAG}
LL_SOURCE=${LL_SOURCE:-.cache/vllm-src/vllm-0.34.0}
LL_DIR=vllm/model_executor/kernels/linear/cute_dsl
BENCH="bash benchmarks/kernel/bench_router_device.sh anchors-ll034"
SELF=$HERE/cutlass_dsl_side.sh

LOG_TAG=cutlass_dsl_side
# shellcheck source=ci/device_runtime/staged_archive.sh
source "$HERE/staged_archive.sh"
# shellcheck source=ci/device_runtime/pack_pieces.sh
source "$HERE/pack_pieces.sh"
usage() {
  echo "usage: $0 build|stage|install   (build here; stage and install on the device)" >&2
  exit 3
}

# ---------------------------------------------------------------------------
# build (here)
# ---------------------------------------------------------------------------
build() {
  local dl=$ROOT/downloads/$TAG build=$ROOT/build/$TAG tools=$ROOT/tools
  local piece_bytes=${PIECE_BYTES:-50000000} xz_preset=${XZ_PRESET:--9e}
  # Left out of the assembled site (paths relative to it) and why.
  local trim=(
    bin                                      # console scripts (run-iket, tvm-ffi-*) with THIS machine's interpreter path
    nvidia_cutlass_dsl/cu13/lib/stubs        # link-time stubs for AOT cross-compiles to aarch64 Linux / QNX
    tvm_ffi/3rdparty/libbacktrace            # C sources for building tvm-ffi itself (libtvm_ffi.so has it built in)
  )
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  step() { printf '\n== cutlass_dsl_side build: %s (%s)\n' "$1" "$(date +%T)"; }
  # CPython 3.12 x86_64 manylinux (the device: glibc 2.39) or pure-Python wheels; no sdists
  local plat=(--only-binary=:all: --implementation cp --python-version 3.12
    --abi cp312 --abi abi3 --abi none --platform any --platform manylinux2014_x86_64)
  local n
  for n in $(seq 17 39); do plat+=(--platform "manylinux_2_${n}_x86_64"); done

  step "tools venv ($tools)"
  if ! "$tools/bin/python" -c 'import packaging' 2>/dev/null; then
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install -q --upgrade "pip>=25.1" packaging
  fi
  local pip=("$tools/bin/python" -m pip)

  step "pins against vLLM 0.34.0's metadata ($LL_SOURCE/WHEEL-METADATA)"
  if [[ -f $LL_SOURCE/WHEEL-METADATA ]]; then
    local want got bad=0
    for want in "${PINS[@]}"; do
      # vLLM names nvidia-cutlass-dsl[cu13]; the -libs-* come through it
      [[ $want == nvidia-cutlass-dsl-libs-* ]] && continue
      [[ $want == nvidia-cutlass-dsl==* ]] && want="nvidia-cutlass-dsl[cu13]==${want##*==}"
      got=$(grep -iE "^Requires-Dist: ${want%%[[=]*}(\[[^]]*\])?[ =<>~!]" "$LL_SOURCE/WHEEL-METADATA" \
        | grep -v 'extra ==' | sed 's/^Requires-Dist: //; s/ //g' || true)
      if [[ ${got,,} == "${want,,}" ]]; then echo "  $got"; else
        echo "  MISMATCH: PINS say $want, vLLM 0.34.0 requires '${got:-nothing}'"
        bad=1
      fi
    done
    ((bad == 0)) || die 3 "PINS differ from $LL_SOURCE/WHEEL-METADATA"
  else
    echo "  (no $LL_SOURCE/WHEEL-METADATA here: pins not cross-checked)"
  fi

  step "wheels ($dl)"
  mkdir -p "$dl"
  local pin stem wheels=() have missing=0
  shopt -s nullglob nocaseglob
  for pin in "${PINS[@]}"; do
    stem=${pin%%==*}
    have=("$dl/${stem//-/_}-${pin##*==}"-*.whl)
    ((${#have[@]} == 1)) || missing=1
  done
  if ((missing)); then
    "${pip[@]}" download -q --no-deps "${plat[@]}" -d "$dl" "${PINS[@]}" 2> >(grep -v 'is ignored' >&2)
  fi
  for pin in "${PINS[@]}"; do
    stem=${pin%%==*}
    have=("$dl/${stem//-/_}-${pin##*==}"-*.whl)
    ((${#have[@]} == 1)) || die 3 "expected one wheel for $pin in $dl, found ${#have[@]}"
    wheels+=("${have[0]}")
  done
  shopt -u nullglob nocaseglob
  local w
  for w in "${wheels[@]}"; do printf '  %11d  %s\n' "$(stat -c %s "$w")" "${w##*/}"; done

  step "requirements of the side wheels: met by the side, the 0.26.0 runtime or the device"
  "$tools/bin/python" - "$HERE/requirements-0.26.0.txt" "$HERE/device_packages.txt" "${wheels[@]}" <<'PY'
import email.parser
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

runtime_pins, device_pins = ({}, {})
for pins, listing in ((runtime_pins, sys.argv[1]), (device_pins, sys.argv[2])):
    for line in Path(listing).read_text().splitlines():
        line = line.split("#")[0].split(";")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
#: requirements that are neither carried nor needed, and why
EXCLUDED = {
    "nvidia-cutlass-dsl-libs-cu12": "the CUDA 12 build of the DSL's libraries; the device "
    "runs CUDA 13 and the [cu13] extra's -libs-cu13 is carried (cutlass loads _cutlass_ir.cu13)",
}
EXTRAS = {"nvidia-cutlass-dsl": {"cu13"}}  # vLLM 0.34.0: nvidia-cutlass-dsl[cu13]==4.8.0
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip
side, metas = {}, []
for wheel in sys.argv[3:]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(zf.read(meta).decode())
    side[canonicalize_name(msg["Name"])] = msg["Version"]
    metas.append(msg)
failed = False
for msg in metas:
    name = canonicalize_name(msg["Name"])
    extras = EXTRAS.get(name, set()) | {""}
    for text in msg.get_all("Requires-Dist") or []:
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
            continue
        dep = canonicalize_name(req.name)
        for where, pins in (("side", side), ("0.26.0 runtime", runtime_pins),
                            ("device", device_pins)):  # fmt: skip
            if dep in pins:
                ok = req.specifier.contains(Version(pins[dep]), prereleases=True)
                print(f"  {'ok  ' if ok else 'FAIL'} {name}: {req} <- {where} {pins[dep]}")
                failed |= not ok
                break
        else:
            if dep in EXCLUDED:
                print(f"  left out {name}: {req} ({EXCLUDED[dep]})")
            else:
                print(f"  FAIL {name}: {req} <- nothing carries it")
                failed = True
for dep, version in sorted(side.items()):
    if dep in runtime_pins:
        print(f"  shadows the 0.26.0 runtime's {dep} {runtime_pins[dep]} with {version}")
    if dep in device_pins:
        print(f"  FAIL {dep}: the device has {device_pins[dep]}; the side site must not repeat it")
        failed = True
sys.exit(1 if failed else 0)
PY

  # Everything the bundle is made of; an unchanged key skips the build.
  local key
  key=$({
    echo "$NAME $piece_bytes $xz_preset ${trim[*]}"
    for w in "${wheels[@]}"; do echo "${w##*/} $(stat -c %s "$w")"; done
  } | sha256sum | cut -c1-16)
  if [[ -f $SRC/MANIFEST.sha256 && "$(cat "$SRC/.key" 2>/dev/null)" == "$key" ]]; then
    step "pieces are up to date (key $key)"
  else
    step "assemble the site ($build/site)"
    rm -rf "$build"
    mkdir -p "$build"
    "${pip[@]}" install -q --no-deps --no-index --no-compile --target "$build/site" \
      "${plat[@]}" "${wheels[@]}" 2> >(grep -v 'is ignored' >&2)
    local t
    for t in "${trim[@]}"; do
      [[ -e $build/site/$t ]] || die 3 "trim: $t is not in the assembled site (the wheels changed?)"
      printf '  trim %9s bytes  %s\n' "$(du -sb "$build/site/$t" | cut -f1)" "$t"
      rm -rf "${build:?}/site/$t"
    done
    find "$build/site" -name __pycache__ -type d -prune -exec rm -rf {} +
    [[ -f $build/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so &&
      -f $build/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so ]] \
      || die 3 "the assembled site has no cu13 build of the DSL"
    du -sb "$build/site" | awk '{printf "  site: %.1f MB uncompressed\n", $1 / 1e6}'

    local info
    info=$(printf '{"side": "%s", "key": "%s", "date": "%s"}' "$TAG" "$key" "$(date -u +%FT%TZ)")
    pack_pieces "$build" "$NAME" "$SRC" "$piece_bytes" "$xz_preset" "$tools/bin/python" "$info" \
      || die 3 "packing failed"
    echo "$key" >"$SRC/.key"
  fi
  print_calls
}

# The device calls: the side's own (after the 0.26.0 runtime's, on the same warm
# machine), and the fewest-calls variant where the runtime's last call takes the
# side's last piece along. Each call carries at most 64 MiB with the working tree.
print_calls() {
  local pieces total repo last i k n
  mapfile -t pieces < <(cd "$SRC" && ls "$NAME".part[0-9]*)
  total=$(cat "$SRC/$NAME".part[0-9]* | wc -c)
  # what travels in every call besides the carried paths: tracked and
  # untracked-not-ignored files
  repo=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
  local extra=("$LL_SOURCE/$LL_DIR" "$LL_SOURCE/WHEEL-METADATA")
  [[ -d ${extra[0]} && -f ${extra[1]} ]] \
    || echo "NOTE: ${extra[0]} or ${extra[1]} is not here; anchors-ll034 needs both carried"
  mb() { awk -v b="$1" 'BEGIN {printf "%.1f MB", b / 1e6}'; }
  # emit TITLE COMMAND PATHS...: one call, its size with the working tree, its carry list
  emit() {
    local title=$1 cmd=$2 json='' p bytes
    shift 2
    for p in "$@"; do json+="${json:+, }\"$p\""; done
    bytes=$(($(du -scb "$@" 2>/dev/null | tail -1 | cut -f1) + repo))
    if ((bytes > 64 * 1024 * 1024)); then title+=" (OVER 64 MiB: $(mb "$bytes") with the working tree)"; else
      title+=" ($(mb "$bytes") of 64 MiB = 67.1 MB with the working tree)"
    fi
    printf '\n%s:\n  carry:   [%s]\n  command: %s\n' "$title" "$json" "$cmd"
  }

  printf '\n== device calls: %d pieces, %d bytes in all (%s); working tree %s\n' \
    "${#pieces[@]}" "$total" "$(mb "$total")" "$(mb "$repo")"
  echo "A. After the 0.26.0 runtime's calls (ci/device_runtime/install_on_device.sh; the bench"
  echo "   needs vLLM 0.26.0 installed), on the same warm machine, back to back: the stage"
  echo "   (/root/stage-cutlass480) lives only while the device stays warm, 30 s after a call."
  last=$((${#pieces[@]} - 1))
  for i in "${!pieces[@]}"; do
    if ((i < last)); then
      emit "call $((i + 1))/${#pieces[@]}" "bash $SELF stage" "$SRC/MANIFEST.sha256" "$SRC/${pieces[i]}"
    else
      emit "call $((i + 1))/${#pieces[@]}" "bash $SELF install && $BENCH" \
        "$SRC/MANIFEST.sha256" "$SRC/${pieces[i]}" "${extra[@]}"
    fi
  done

  local rt=$ROOT/pieces-vllm026 rtp
  [[ -f $rt/MANIFEST.sha256 ]] || return 0
  mapfile -t rtp < <(cd "$rt" && ls vllm-*.tar.xz.part[0-9]*)
  n=$((${#rtp[@]} + last))
  echo
  echo "B. Fewest calls ($n, the runtime's included): the side's staging calls first, then the"
  echo "   runtime's, its last one taking the side's last piece and the bench along (the"
  echo "   runtime's install and the side's run first, so the bench gets BENCH_BUDGET=330 s):"
  k=0
  for ((i = 0; i < last; i++)); do
    k=$((k + 1))
    emit "call $k/$n" "bash $SELF stage" "$SRC/MANIFEST.sha256" "$SRC/${pieces[i]}"
  done
  for i in "${!rtp[@]}"; do
    k=$((k + 1))
    if ((i < ${#rtp[@]} - 1)); then
      emit "call $k/$n" "bash $HERE/install_on_device.sh --stage-only" "$rt/MANIFEST.sha256" "$rt/${rtp[i]}"
    else
      emit "call $k/$n" "bash $HERE/install_on_device.sh && bash $SELF install && BENCH_BUDGET=330 $BENCH" \
        "$rt/MANIFEST.sha256" "$rt/${rtp[i]}" "$SRC/MANIFEST.sha256" "$SRC/${pieces[last]}" "${extra[@]}"
    fi
  done
}

# ---------------------------------------------------------------------------
# stage / install (on the device)
# ---------------------------------------------------------------------------
device() {
  local mode=$1
  local stage prefix py=${PYTHON:-python3}
  stage=$(realpath -m "${CUTLASS_SIDE_STAGE:-/root/stage-cutlass480}")
  prefix=$(realpath -m "${CUTLASS_SIDE_PREFIX:-/root/cutlass480}")
  # 1. stage the pieces carried in this call
  stage_carried "$SRC" "$stage"
  [[ $ARCHIVE == "$NAME" ]] || die 2 "$MANIFEST is not a manifest of $NAME (pieces of another bundle?)"
  if [[ $mode == stage ]]; then
    ((CARRIED)) || die 2 "no piece carried in $SRC: carry $SRC/MANIFEST.sha256 and one $NAME.partNN"
    log "staged $((${#PIECES[@]} - ${#MISSING[@]}))/${#PIECES[@]} pieces in $stage; still to carry: ${MISSING[*]:-none}"
    is_unpacked "$prefix" nvidia_cutlass_dsl && log "this build is already installed in $prefix"
    return 0
  fi

  # 2. reassemble, verify and unpack (skipped when this archive is installed)
  if is_unpacked "$prefix" nvidia_cutlass_dsl; then
    log "$ARCHIVE ($ARCHIVE_SHA) is already installed in $prefix"
  else
    unpack_staged "$stage" "$prefix" "$py" nvidia_cutlass_dsl "with 'stage'"
  fi

  # 3. how a process takes the side site. PYTHONPATH entries come before the
  #    device's site-packages and before everything a .pth file appends there (the
  #    0.26.0 runtime's vllm026_runtime.pth: site.addsitedir(/root/vllm026/site)), so
  #    the side's nvidia_cutlass_dsl, tvm_ffi and quack and their dist-info win.
  #    PYTHONPATH entries get no .pth processing: dsl_packages/ (cutlass, iket) is
  #    named too. (The runtime's nvidia_cutlass_dsl_packages.pth still runs and does
  #    sys.path.insert(0, nvidia_cutlass_dsl.__path__[0] + '/dsl_packages'), but
  #    nvidia_cutlass_dsl then resolves to the side's first: it inserts the side's.)
  local pp="$prefix/site/nvidia_cutlass_dsl/dsl_packages:$prefix/site"
  cat >"$prefix/env.sh" <<EOF
# nvidia-cutlass-dsl $DSL_VERSION (vLLM 0.34.0's CuTe-DSL) ahead of the 0.26.0 runtime's
# (ci/device_runtime/cutlass_dsl_side.sh): source this in the processes that want it only.
export PYTHONPATH=$pp\${PYTHONPATH:+:\$PYTHONPATH}
EOF

  # 4. smoke: with that PYTHONPATH the pinned distributions and their modules come
  #    from the side site, and `import cutlass` is 4.8.0
  log "smoke (PYTHONPATH=$pp:...)"
  local status=0 out
  PYTHONPATH=$pp${PYTHONPATH:+:$PYTHONPATH} "$py" - "$prefix/site" "${PINS[@]}" <<'PY' || status=1
import importlib.metadata as md
import importlib.util
import os
import sys

site, pins = os.path.realpath(sys.argv[1]), sys.argv[2:]
failed = 0
for pin in pins:
    name, version = pin.split("==")
    dist = md.distribution(name)
    where = os.path.realpath(str(dist.locate_file("")))
    ok = dist.version == version and where == site
    failed += not ok
    print(f"  {'ok  ' if ok else 'FAIL'} {name} {dist.version} (want {version}) from {where}")
for module in ("cutlass", "iket", "tvm_ffi", "quack"):
    spec = importlib.util.find_spec(module)
    origin = os.path.realpath(spec.origin) if spec and spec.origin else None
    ok = origin is not None and origin.startswith(site + os.sep)
    failed += not ok
    print(f"  {'ok  ' if ok else 'FAIL'} {module} from {origin}")
sys.exit(1 if failed else 0)
PY
  if [[ ${CUTLASS_SIDE_IMPORT:-1} == 0 ]]; then
    log "import cutlass skipped (CUTLASS_SIDE_IMPORT=0)"
  else
    # shellcheck disable=SC2016
    out=$(PYTHONPATH=$pp${PYTHONPATH:+:$PYTHONPATH} "$py" -c \
      'import cutlass, importlib.metadata as m; print(m.version("nvidia-cutlass-dsl"))' 2>&1 | tail -n 1) || true
    if [[ $out == "$DSL_VERSION" ]]; then
      echo "  ok   import cutlass: nvidia-cutlass-dsl $out"
    else
      status=1
      echo "  FAIL import cutlass with the side site first printed: $out (want $DSL_VERSION)"
    fi
  fi
  out=$("$py" -c 'import importlib.metadata as m; print(m.version("nvidia-cutlass-dsl"))' 2>/dev/null) || out=none
  log "without it, this python sees nvidia-cutlass-dsl $out (the 0.26.0 runtime's is 4.6.0)"
  if ((status)); then
    log "FAILED (see above)"
    return 1
  fi
  log "OK: run a process with PYTHONPATH=$pp:\$PYTHONPATH (or 'source $prefix/env.sh'); $BENCH does it itself"
}

case ${1:-} in
  build) build ;;
  stage | install) device "$1" ;;
  *) usage ;;
esac
