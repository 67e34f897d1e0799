#!/usr/bin/env bash
# Build the vLLM runtime for the GPU device, on THIS machine (README.md).
#
#   bash ci/device_runtime/prepare.sh            # vLLM 0.26.0, cp312 -> .cache/device_runtime/pieces-vllm026/
#   VLLM_RUNTIME=0.24.0 bash ci/device_runtime/prepare.sh   # the previous runtime -> pieces-vllm024/
#   PYVER=3.11 bash ci/device_runtime/prepare.sh # same for Python 3.11 (local simulation only)
#
# Per vLLM version V: requirements-V.txt, trim-V.txt, excluded-V.txt, allow_mismatch-V.txt.
# Downloads (once) the vLLM V CUDA wheel and the wheels of requirements-V.txt,
# checks the dependency closure against the device's packages, assembles one site
# directory (pip install --target, then trim-V.txt), packs it as tar.xz, splits it
# into pieces of at most PIECE_BYTES and writes MANIFEST.sha256. Re-runs reuse
# the downloads and skip the build when nothing changed. Ends by printing the
# device calls to make.
set -euo pipefail
cd "$(dirname "$0")/../.."

HERE=ci/device_runtime
VLLM_VERSION=${VLLM_RUNTIME:-0.26.0}
PYVER=${PYVER:-3.12}
PYTAG=cp${PYVER/./}
ROOT=${DEVICE_RUNTIME_DIR:-.cache/device_runtime}
# 50 MB: a call carries the piece and the repo's tracked files (12.5 MB on 2026-12-06) within 64 MiB.
PIECE_BYTES=${PIECE_BYTES:-50000000}
XZ_PRESET=${XZ_PRESET:--9e} # -9e: smallest (about 11 min here); simulate_locally.sh uses -0
DL=$ROOT/downloads
DEPS=$DL/$PYTAG
TOOLS=$ROOT/tools
for f in requirements trim excluded allow_mismatch; do
  [[ -f $HERE/$f-$VLLM_VERSION.txt ]] || {
    echo "prepare: no $HERE/$f-$VLLM_VERSION.txt: VLLM_RUNTIME=$VLLM_VERSION is not set up" >&2
    exit 1
  }
done
REQS=$HERE/requirements-$VLLM_VERSION.txt
TRIM=$HERE/trim-$VLLM_VERSION.txt
EXCLUDED=$HERE/excluded-$VLLM_VERSION.txt
ALLOW=$HERE/allow_mismatch-$VLLM_VERSION.txt
# vllm026 for 0.26.0: the device's prefix (/root/vllm026) and the pieces folder
TAG=vllm$(awk -F. '{printf "%d%02d", $1, $2}' <<<"$VLLM_VERSION")
BUILD=$ROOT/build/$TAG-$PYTAG
# the archive's name carries the version: install_on_device.sh reads it from the manifest
NAME=vllm-$VLLM_VERSION-$PYTAG.tar.xz
if [[ $PYVER == 3.12 ]]; then PIECES=$ROOT/pieces-$TAG; else PIECES=$ROOT/pieces-$TAG-$PYTAG; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n== prepare: %s (%s)\n' "$1" "$(date +%T)"; }
# shellcheck source=ci/device_runtime/pack_pieces.sh
source "$HERE/pack_pieces.sh"

# Wheels for the device: CPython $PYVER, x86_64 manylinux (glibc <= 2.39: Ubuntu
# 24.04), pure Python; never an sdist.
PLAT=(--only-binary=:all: --implementation cp --python-version "$PYVER"
  --abi "$PYTAG" --abi abi3 --abi none --platform any
  --platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for n in $(seq 5 39); do PLAT+=(--platform "manylinux_2_${n}_x86_64"); done

step "tools venv ($TOOLS)"
if ! "$TOOLS/bin/python" -c 'import packaging' 2>/dev/null; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q --upgrade "pip>=25.1" packaging
fi
PIP=("$TOOLS/bin/python" -m pip)
BUNDLE=("$TOOLS/bin/python" "$HERE/bundle.py")

step "vLLM $VLLM_VERSION wheel"
mkdir -p "$DL" "$DEPS" "$(dirname "$BUILD")"
shopt -s nullglob
vllm_whl=("$DL"/vllm-"$VLLM_VERSION"-*manylinux*_x86_64.whl)
if ((${#vllm_whl[@]} != 1)); then
  "${PIP[@]}" download -q --no-deps "${PLAT[@]}" -d "$DL" "vllm==$VLLM_VERSION"
  vllm_whl=("$DL"/vllm-"$VLLM_VERSION"-*manylinux*_x86_64.whl)
fi
echo "${vllm_whl[0]} ($(stat -c %s "${vllm_whl[0]}") bytes)"

step "dependency wheels ($DEPS)"
if ! "${BUNDLE[@]}" select "$REQS" "$DEPS" >/dev/null 2>&1; then
  "${PIP[@]}" download -q --no-deps "${PLAT[@]}" -d "$DEPS" -r "$REQS"
fi
mapfile -t dep_whls < <("${BUNDLE[@]}" select "$REQS" "$DEPS")
echo "${#dep_whls[@]} wheels, $(du -cb "${dep_whls[@]}" | tail -1 | cut -f1) bytes"

step "closure check against the device's packages"
sel=$(mktemp -d)
trap 'rm -rf "$sel"' EXIT
for f in "${dep_whls[@]}"; do ln -s "$(realpath "$f")" "$sel/"; done
"${BUNDLE[@]}" check --vllm-wheel "${vllm_whl[0]}" --wheels "$sel" \
  --device "$HERE/device_packages.txt" --excluded "$EXCLUDED" \
  --allow-mismatch "$ALLOW" --python-version "$PYVER" --stubs "$sel/stubs"

# Everything the bundle is made of; an unchanged key skips the build.
key=$( {
  echo "$VLLM_VERSION $PYVER $PIECE_BYTES $XZ_PRESET"
  for f in "${vllm_whl[0]}" "${dep_whls[@]}"; do echo "$(basename "$f") $(stat -c %s "$f")"; done
  cat "$TRIM" "$HERE/bundle.py"
} | sha256sum | cut -c1-16)
if [[ -f $PIECES/MANIFEST.sha256 && "$(cat "$PIECES/.key" 2>/dev/null)" == "$key" ]]; then
  step "bundle is up to date (key $key)"
else
  if [[ $PYVER == 3.12 && ${RESOLVER_CHECK:-1} == 1 ]]; then
    step "pip resolver: $(basename "$REQS") with the device's packages as constraints"
    # The excluded requirements resolve to bundle.py's empty stand-ins (--stubs above),
    # so pip checks what is carried without pulling in what excluded-V.txt leaves out.
    cons=$sel/constraints.txt
    grep -v '^#' "$HERE/device_packages.txt" \
      | grep -viE "^($(sed -e 's/#.*//' -e '/^ *$/d' "$ALLOW" | tr -d ' ' | paste -sd'|'))==" \
      | grep -viE '^pip==' >"$cons"
    "${PIP[@]}" install -q --dry-run --ignore-installed --target "$sel/resolve" \
      --report "$BUILD.resolve.json" "${PLAT[@]}" -c "$cons" \
      -c "$sel/stubs/constraints.txt" --find-links "$sel/stubs" -r "$REQS" \
      2> >(grep -v 'does not provide the extra' >&2)
    echo "resolver: OK (report: $BUILD.resolve.json)"
  fi

  step "assemble the site directory"
  rm -rf "$BUILD"
  mkdir -p "$BUILD"
  "${PIP[@]}" install -q --no-deps --no-index --no-compile --target "$BUILD/site" \
    "${PLAT[@]}" "${vllm_whl[0]}" "${dep_whls[@]}"
  "${BUNDLE[@]}" prune "$BUILD/site" "$TRIM"
  du -sb "$BUILD/site" | awk '{printf "site: %.1f MB uncompressed\n", $1 / 1e6}'

  info=$(printf '{"vllm_wheel": "%s", "vllm": "%s", "python": "%s", "key": "%s", "date": "%s"}' \
    "$(basename "${vllm_whl[0]}")" "$VLLM_VERSION" "$PYVER" "$key" "$(date -u +%FT%TZ)")
  pack_pieces "$BUILD" "$NAME" "$PIECES" "$PIECE_BYTES" "$XZ_PRESET" "$TOOLS/bin/python" "$info" \
    || { echo "prepare: packing failed" >&2; exit 1; }
  echo "$key" >"$PIECES/.key"
fi

mapfile -t pieces < <(cd "$PIECES" && ls "$NAME".part*)
total=$(cat "$PIECES/$NAME".part* | wc -c)
step "device calls: ${#pieces[@]} pieces, $total bytes in all"
cat <<EOF
Make these calls back to back (the device keeps /root/stage only while it stays
warm, 30 s after a call). Each carries MANIFEST.sha256 and one piece.
EOF
last=$((${#pieces[@]} - 1))
for i in "${!pieces[@]}"; do
  # install_on_device.sh looks for pieces-vllm026/ unless told another version
  cmd="bash $HERE/install_on_device.sh"
  [[ $VLLM_VERSION == 0.26.0 ]] || cmd="VLLM_RUNTIME=$VLLM_VERSION $cmd"
  [[ $PYVER == 3.12 ]] || cmd="VLLM_RUNTIME_PIECES=$PIECES $cmd"
  ((i < last)) && cmd+=" --stage-only"
  cat <<EOF

call $((i + 1))/${#pieces[@]}:
  carry:   ["$PIECES/MANIFEST.sha256", "$PIECES/${pieces[i]}"]
  command: $cmd
EOF
done
cat <<EOF

The last call installs into /root/$TAG and runs the import smoke; append the
serving tests to its command with '&&' (or make them later calls: the install
stays while the machine is warm, and re-running the last call is idempotent).
EOF
