#!/usr/bin/env bash
# lm_eval for the GPU device (ci/device_e2e.sh gsm8k_gpu), which the vLLM
# runtime bundle does not carry. Two sides:
#
#   bash ci/device_runtime/lm_eval_extra.sh build     # HERE: -> .cache/device_runtime/lm_eval/
#   bash ci/device_runtime/lm_eval_extra.sh install   # ON THE DEVICE, carrying that folder's
#                                                     # lm_eval-site.tar.xz + .sha256
#
# build downloads the wheels of lm_eval_requirements.txt for CPython 3.12 (pure
# Python; the three sdist-only ones are built into wheels), checks that every
# requirement of theirs outside the list is met by the device's packages or the
# vLLM bundle's pins (requirements-$VLLM_RUNTIME.txt, VLLM_RUNTIME=0.26.0 by
# default), unpacks the wheels into one site folder (pure-Python wheels need no
# installer) and packs it as tar.xz (~15 MB: one carry).
# install unpacks it to /root/lm_eval_site and prints the PYTHONPATH entry;
# gsm8k_gpu in ci/device_e2e.sh does that itself when lm_eval is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=ci/device_runtime
ROOT=${DEVICE_RUNTIME_DIR:-.cache/device_runtime}/lm_eval
ARCHIVE=lm_eval-site.tar.xz
PREFIX=${LM_EVAL_PREFIX:-/root/lm_eval_site}
export PIP_DISABLE_PIP_VERSION_CHECK=1

case ${1:?usage: $0 build|install} in
  build)
    PY=${PYTHON:-python3}
    mkdir -p "$ROOT/wheels"
    reqs=$(grep -v '^#' "$HERE/lm_eval_requirements.txt" | sed '/^$/d')
    for req in $reqs; do
      name=${req%%==*}
      stem=$(echo "$name" | tr '-' '_')
      shopt -s nullglob nocaseglob
      version=${req##*==}
      have=("$ROOT/wheels/${stem}-${version}"-*.whl)
      shopt -u nullglob nocaseglob
      ((${#have[@]})) && continue
      if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
        --python-version 3.12 --abi cp312 --abi none --platform any -d "$ROOT/wheels" "$req" 2> /dev/null; then
        # sdist only (pure Python): build the wheel here.
        "$PY" -m pip wheel -q --no-deps -w "$ROOT/wheels" "$req"
      fi
    done
    "$PY" - "$ROOT/wheels" "$HERE/device_packages.txt" "$HERE/requirements-${VLLM_RUNTIME:-0.26.0}.txt" <<'PYEOF'
import sys, zipfile, email.parser
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
wheels = sorted(Path(sys.argv[1]).glob("*.whl"))
pins = {}
for listing in sys.argv[2:]:
    for line in Path(listing).read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.split(";")[0].strip()
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
carried, metas = set(), []
for wheel in wheels:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(zf.read(meta).decode())
    if not wheel.name.endswith(("-none-any.whl", "-py312-none-any.whl")) and "-py3-" not in wheel.name:
        sys.exit(f"{wheel.name}: not a pure-Python wheel")
    carried.add(canonicalize_name(msg["Name"]))
    metas.append(msg)
def active(msg, extras):
    for text in msg.get_all("Requires-Dist") or []:
        req = Requirement(text)
        if not req.marker or any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
            yield req
# The extras each package is asked for: lm_eval[api], and whatever a carried
# package asks of another (pytablewriter needs typepy[datetime], hence pytz).
extras_of = {canonicalize_name(m["Name"]): set() for m in metas}
extras_of["lm-eval"] = {"api"}
changed = True
while changed:
    changed = False
    for msg in metas:
        for req in active(msg, extras_of[canonicalize_name(msg["Name"])]):
            wanted = extras_of.setdefault(canonicalize_name(req.name), set())
            if not set(req.extras) <= wanted:
                wanted |= set(req.extras)
                changed = True
problems = []
for msg in metas:
    for req in active(msg, extras_of[canonicalize_name(msg["Name"])]):
        name = canonicalize_name(req.name)
        if name in carried:
            continue
        if name not in pins:
            problems.append(f"{msg['Name']} needs {req}: neither carried nor on the device")
        elif req.specifier and Version(pins[name]) not in req.specifier:
            problems.append(f"{msg['Name']} needs {req}: the device has {pins[name]}")
for problem in problems:
    print("lm_eval_extra:", problem, file=sys.stderr)
print(f"lm_eval_extra: {len(wheels)} wheels, closure {'OK' if not problems else 'BROKEN'}")
sys.exit(1 if problems else 0)
PYEOF
    rm -rf "$ROOT/site" && mkdir -p "$ROOT/site"
    for whl in "$ROOT"/wheels/*.whl; do
      "$PY" -m zipfile -e "$whl" "$ROOT/site"
    done
    # Deterministic archive: sorted names, fixed owner and times.
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$ROOT/site" -cf - . \
      | xz -9e -T0 > "$ROOT/$ARCHIVE"
    (cd "$ROOT" && sha256sum "$ARCHIVE" > "$ARCHIVE.sha256")
    echo "built $ROOT/$ARCHIVE ($(stat -c %s "$ROOT/$ARCHIVE") bytes)"
    echo "device call: carry [\"$ROOT/$ARCHIVE\", \"$ROOT/$ARCHIVE.sha256\"]"
    ;;
  install)
    (cd "$ROOT" && sha256sum -c "$ARCHIVE.sha256") || exit 2
    if [[ "$(cat "$PREFIX/.installed" 2> /dev/null)" != "$(cat "$ROOT/$ARCHIVE.sha256")" ]]; then
      rm -rf "$PREFIX" && mkdir -p "$PREFIX"
      xz -dc "$ROOT/$ARCHIVE" | tar -xf - -C "$PREFIX" || exit 3
      cp "$ROOT/$ARCHIVE.sha256" "$PREFIX/.installed"
    fi
    echo "PYTHONPATH entry: $PREFIX"
    ;;
  *)
    echo "usage: $0 build|install" >&2
    exit 2
    ;;
esac
