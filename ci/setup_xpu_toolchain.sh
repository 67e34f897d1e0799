#!/usr/bin/env bash
# Offline Intel XPU compile toolchain for tests/routing/test_compile_matrix.py (target "pvc"),
# in .cache/xpu-toolchain/ (nothing outside it is touched; re-runnable, stamped):
#   venv/  Intel's Triton XPU backend: triton-xpu 3.3.0b1 (the only Triton with an XPU
#          backend on PyPI; a pre-release) and intel-sycl-rt 2025.0.4 (the SYCL headers
#          and libsycl it compiles its arch parser against); torch comes from .venv
#          (a .pth line), only for triton's build helper.
#   root/  Debian packages unpacked with dpkg -x, not installed: libze1/libze-dev (the
#          Level Zero loader the arch parser links) and intel-opencl-icd with its
#          compiler (IGC) libraries, whose `ocloc` turns SPIR-V into Ponte Vecchio code.
#          Debian 12's compute runtime (22.43) knows pvc and dg2 but not Battlemage (bmg).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.cache/xpu-toolchain
STAMP=$DEST/.ready
if [[ -f $STAMP && $STAMP -nt ci/setup_xpu_toolchain.sh ]]; then
  echo "setup: xpu toolchain is up to date"
  exit 0
fi
PYTHON=${PYTHON:-python3}
TORCH_PYTHON=${TORCH_PYTHON:-.venv/bin/python}  # the test venv (has torch)
mkdir -p "$DEST" .cache/wheels .cache/debs

[[ -x $DEST/venv/bin/python ]] || "$PYTHON" -m venv "$DEST/venv"
PIP=("$DEST/venv/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" download --pre --no-deps triton-xpu==3.3.0b1 -d .cache/wheels
"${PIP[@]}" install --no-deps .cache/wheels/triton_xpu-3.3.0b1-*.whl
"${PIP[@]}" install intel-sycl-rt==2025.0.4
"$TORCH_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
  > "$DEST/venv/lib/python$("$DEST/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')/site-packages/zz_gemma4_router_torch.pth"

PACKAGES=(libze1 libze-dev intel-opencl-icd libigc1 libigdfcl1 libigdgmm12
          libopencl-clang14 libllvmspirvlib14)
if ! (cd .cache/debs && apt-get download "${PACKAGES[@]}" >/dev/null 2>&1); then
  apt-get update -qq >/dev/null
  (cd .cache/debs && apt-get download "${PACKAGES[@]}" >/dev/null 2>&1)
fi
for package in "${PACKAGES[@]}"; do
  dpkg -x .cache/debs/"${package}"_*.deb "$DEST/root"
done

LIB=$PWD/$DEST/root/usr/lib/x86_64-linux-gnu
# (ocloc query writes its answer to a file in the current directory: run it elsewhere)
(cd "$(mktemp -d)" && LD_LIBRARY_PATH=$LIB "$OLDPWD/$DEST/root/usr/bin/ocloc" \
  query OCL_DRIVER_VERSION >/dev/null) \
  || { echo "setup: ocloc from $DEST/root does not run"; exit 1; }
"$DEST/venv/bin/python" -c 'import triton; print("setup: xpu toolchain: triton", triton.__version__)'
touch "$STAMP"
