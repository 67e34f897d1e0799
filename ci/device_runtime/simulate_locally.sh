#!/usr/bin/env bash
# Rehearse the device install on THIS GPU-less machine (Python 3.11; README.md).
#
#   bash ci/device_runtime/simulate_locally.sh
#
# 1. prepare.sh with PYVER=3.11 (same vLLM wheel, same pins, cp311 builds of the
#    compiled ones; xz -0 for speed) -> .cache/device_runtime/pieces-vllm026-cp311/
#    (VLLM_RUNTIME=0.24.0: the 0.24.0 runtime, pieces-vllm024-cp311/)
# 2. a stand-in for the device's python3: a venv with torch 2.11.0 (the CUDA
#    build: it imports without a GPU), triton 3.6.0, torchvision/torchaudio and
#    the device's other packages that vLLM uses (cuda-bindings 13.3.1 too: the
#    CuTe-DSL imports cuda.bindings), at the device's versions where Python 3.11 has them
# 3. a stub libcuda.so.1 (only the driver symbols vLLM's extensions link to) and
#    an out-of-tree vLLM platform plugin that reports an H100 (sm90) CUDA
#    platform, so the CUDA-only import paths run
# 4. install_on_device.sh exactly as the device calls run it: one --stage-only
#    call per piece but the last (each seeing only MANIFEST + its piece), the
#    install call, then again (idempotent path) and a missing-piece check.
# Downloads about 3 GB (torch's CUDA wheels) the first time.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=ci/device_runtime
SIM=${SIM_DIR:-.cache/device_runtime/sim}
VERSION=${VLLM_RUNTIME:-0.26.0}
TAG=vllm$(awk -F. '{printf "%d%02d", $1, $2}' <<<"$VERSION")
PIECES=.cache/device_runtime/pieces-$TAG-cp311
export VLLM_RUNTIME=$VERSION
export PIP_DISABLE_PIP_VERSION_CHECK=1
step() { printf '\n== simulate: %s (%s)\n' "$1" "$(date +%T)"; }

step "cp311 bundle"
PYVER=3.11 XZ_PRESET=${XZ_PRESET:--0} bash "$HERE/prepare.sh" | grep -v '^  \|^call\|^$'

step "device stand-in python ($SIM/py)"
PY=$SIM/py/bin/python
if ! "$PY" -c 'import torch, transformers, scipy, tabulate, cuda.bindings' 2>/dev/null; then
  python3 -m venv "$SIM/py"
  "$PY" -m pip install -q --upgrade pip
  # the device's versions, less those with no Python 3.11 build (numpy 2.5 etc.)
  grep -v '^#' "$HERE/device_packages.txt" \
    | grep -viE '^(numpy|scipy|pandas|opencv-python-headless|numba|llvmlite|pip|jax[a-z0-9-]*|nvidia-.*|cuda-.*)==' \
      >"$SIM/constraints.txt"
  "$PY" -m pip install -q -c "$SIM/constraints.txt" torch==2.11.0 triton==3.6.0 \
    torchvision==0.26.0 torchaudio==2.11.0 "numpy<2.5" transformers tokenizers huggingface_hub \
    safetensors regex requests tqdm psutil sentencepiece py-cpuinfo protobuf aiohttp \
    prometheus_client pillow tiktoken "opencv-python-headless>=4.13" pyyaml six setuptools \
    einops cloudpickle ninja "numba>=0.65" filelock jinja2 httpx anyio click rich typer uvloop \
    grpcio scipy pandas msgpack tabulate `# tabulate: benchmark tables (smoke.py imports it)` \
    cuda-bindings==13.3.1 cuda-pathfinder==1.8.1 # the device's; the CuTe-DSL imports cuda.bindings
fi

step "stub libcuda.so.1 and a fake H100 platform plugin"
mkdir -p "$SIM/stub" "$SIM/hooks/simfakecuda-0.dist-info"
cat >"$SIM/stub/libcuda.c" <<'EOF'
#define S(n) int n(void) { return 100; } /* CUDA_ERROR_NO_DEVICE */
S(cuGetProcAddress_v2) S(cuPointerGetAttribute) S(cuTensorMapEncodeTiled) S(cuInit)
S(cuCtxGetCurrent) S(cuCtxSetCurrent) S(cuDeviceGetAttribute) S(cuDevicePrimaryCtxRetain)
S(cuGetErrorString) S(cuMemAddressFree) S(cuMemAddressReserve) S(cuMemCreate)
S(cuMemGetAllocationGranularity) S(cuMemMap) S(cuMemRelease) S(cuMemSetAccess) S(cuMemUnmap)
EOF
cc -shared -fPIC -o "$SIM/stub/libcuda.so.1" "$SIM/stub/libcuda.c"
cat >"$SIM/hooks/simfakecuda.py" <<'EOF'
"""Simulation only: make vLLM resolve an H100 CUDA platform on a GPU-less host."""


def activate():
    return "simfakecuda_platform.FakeH100"
EOF
cat >"$SIM/hooks/simfakecuda_platform.py" <<'EOF'
from vllm.platforms.cuda import NonNvmlCudaPlatform
from vllm.platforms.interface import DeviceCapability


class FakeH100(NonNvmlCudaPlatform):
    @classmethod
    def get_device_capability(cls, device_id=0):
        return DeviceCapability(9, 0)

    @classmethod
    def get_device_name(cls, device_id=0):
        return "NVIDIA H100 80GB HBM3 (simulated)"

    @classmethod
    def get_device_total_memory(cls, device_id=0):
        return 80 << 30
EOF
printf 'Metadata-Version: 2.1\nName: simfakecuda\nVersion: 0\n' >"$SIM/hooks/simfakecuda-0.dist-info/METADATA"
printf '[vllm.platform_plugins]\nsimfakecuda = simfakecuda:activate\n' \
  >"$SIM/hooks/simfakecuda-0.dist-info/entry_points.txt"

step "device calls"
export PYTHON=$PY VLLM_RUNTIME_STAGE=$SIM/stage VLLM_RUNTIME_PREFIX=$SIM/$TAG
export LD_LIBRARY_PATH=$PWD/$SIM/stub PYTHONPATH=$PWD/$SIM/hooks
rm -rf "$SIM/stage" "$SIM/$TAG" "$SIM/call"
mapfile -t pieces < <(cd "$PIECES" && ls ./*.part[0-9]*)
last=$((${#pieces[@]} - 1))
call() { # call N: a working tree that holds MANIFEST + piece N only
  rm -rf "$SIM/call"
  mkdir -p "$SIM/call"
  cp "$PIECES/MANIFEST.sha256" "$PIECES/${pieces[$1]}" "$SIM/call/"
  shift
  VLLM_RUNTIME_PIECES=$SIM/call bash "$HERE/install_on_device.sh" "$@"
}
for i in "${!pieces[@]}"; do
  ((i < last)) || break
  echo "-- call $((i + 1)): --stage-only"
  call "$i" --stage-only
done
echo "-- call $((last + 1)): install"
call "$last"
echo "-- again (idempotent)"
call "$last"
echo "-- a fresh stage missing piece 0 must fail with exit 2"
rm -rf "$SIM/stage" "$SIM/$TAG/.installed"
set +e
call "$last" 2>&1 | tail -4
rc=${PIPESTATUS[0]}
set -e
[[ $rc == 2 ]] || { echo "simulate: expected exit 2, got $rc"; exit 1; }
step "OK"
