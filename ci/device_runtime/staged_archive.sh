# shellcheck shell=bash
# Sourced (not run) by install_on_device.sh and cutlass_dsl_side.sh, on the device:
# one tar.xz carried over several calls in pieces, as prepare.sh splits it
# (MANIFEST.sha256: one line per piece and one for the whole archive). The caller
# sets LOG_TAG before sourcing. Exit codes: 2 pieces missing or damaged, 3 unpacking
# failed.

log() { printf '[%s %3ds] %s\n' "$LOG_TAG" "$SECONDS" "$*"; }
die() {
  local code=$1
  printf '[%s] ERROR: %s\n' "$LOG_TAG" "$2" >&2
  shift 2
  (($#)) && printf '%s\n' "$@" >&2
  exit "$code"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
want_sha() { awk -v n="$1" '$2 == n {print $1}' "$MANIFEST"; }

# stage_carried SRC STAGE: take the manifest carried in SRC (staged pieces of another
# build go), read it into MANIFEST, ARCHIVE, ARCHIVE_SHA and PIECES, and stage every
# piece carried in SRC whose sha256 the manifest confirms. Sets CARRIED (pieces staged
# by this call) and MISSING (pieces not staged yet).
stage_carried() {
  local src=$1 stage=$2 f name want got
  mkdir -p "$stage"
  if [[ -f $src/MANIFEST.sha256 ]]; then
    if [[ -f $stage/MANIFEST.sha256 ]] && ! cmp -s "$src/MANIFEST.sha256" "$stage/MANIFEST.sha256"; then
      log "new manifest: removing the staged pieces of another build"
      rm -f "$stage"/*.part[0-9]*
    fi
    cp "$src/MANIFEST.sha256" "$stage/MANIFEST.sha256"
  fi
  MANIFEST=$stage/MANIFEST.sha256
  [[ -f $MANIFEST ]] || die 2 "no manifest: carry $src/MANIFEST.sha256 in every call"
  ARCHIVE=$(awk '$2 !~ /\.part[0-9]+$/ {print $2}' "$MANIFEST")
  ARCHIVE_SHA=$(awk '$2 !~ /\.part[0-9]+$/ {print $1}' "$MANIFEST")
  mapfile -t PIECES < <(awk '$2 ~ /\.part[0-9]+$/ {print $2}' "$MANIFEST")
  [[ -n $ARCHIVE && ${#PIECES[@]} -gt 0 ]] || die 2 "$MANIFEST is not a prepare.sh manifest"
  CARRIED=0
  shopt -s nullglob
  for f in "$src"/*.part[0-9]*; do
    name=${f##*/}
    want=$(want_sha "$name")
    [[ -n $want ]] || die 2 "$name is not in $MANIFEST (a piece of another build?)"
    got=$(sha "$f")
    [[ $got == "$want" ]] || die 2 "carried $name has sha256 $got, the manifest says $want: carry it again"
    cp "$f" "$stage/$name.tmp"
    mv "$stage/$name.tmp" "$stage/$name"
    CARRIED=$((CARRIED + 1))
    log "staged $name ($(stat -c %s "$f") bytes)"
  done
  shopt -u nullglob
  MISSING=()
  for name in "${PIECES[@]}"; do [[ -f $stage/$name ]] || MISSING+=("$name"); done
}

# is_unpacked PREFIX MARKER: this manifest's archive is unpacked in PREFIX/site, which
# holds MARKER (a path the archive's site/ must have).
is_unpacked() {
  [[ -f $1/.installed && "$(cat "$1/.installed")" == "$ARCHIVE_SHA" && -e $1/site/$2 ]]
}

# unpack_staged STAGE PREFIX PYTHON MARKER HOW: after stage_carried, check every staged
# piece, reassemble and verify the archive, unpack its site/ to PREFIX/site (which must
# then hold MARKER), compile the .pyc and record the archive's sha256 in
# PREFIX/.installed. HOW says how the staging calls are made (for the error message).
unpack_staged() {
  local stage=$1 prefix=$2 py=$3 marker=$4 how=$5 name damaged=()
  ((${#MISSING[@]} == 0)) || die 2 "pieces not staged: ${MISSING[*]}" \
    "  ($stage lives only while the device stays warm: make the staging calls back to back," \
    "   each carrying MANIFEST.sha256 and one piece, $how; then this call)"
  for name in "${PIECES[@]}"; do
    [[ "$(sha "$stage/$name")" == "$(want_sha "$name")" ]] || damaged+=("$name")
  done
  if ((${#damaged[@]})); then
    (cd "$stage" && rm -f "${damaged[@]}")
    die 2 "staged pieces damaged (removed, carry them again): ${damaged[*]}"
  fi
  log "reassembling $ARCHIVE from ${#PIECES[@]} pieces"
  (cd "$stage" && cat "${PIECES[@]}") >"$stage/$ARCHIVE"
  [[ "$(sha "$stage/$ARCHIVE")" == "$ARCHIVE_SHA" ]] || {
    rm -f "$stage/$ARCHIVE"
    die 2 "reassembled $ARCHIVE: sha256 mismatch"
  }
  rm -rf "$prefix/new" "$prefix/site" "$prefix/.installed"
  mkdir -p "$prefix/new"
  log "unpacking into $prefix/site"
  if command -v xz >/dev/null; then
    xz -dc -T0 "$stage/$ARCHIVE" | tar -x -C "$prefix/new" || die 3 "unpacking failed"
  else
    "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2], filter="fully_trusted")' \
      "$stage/$ARCHIVE" "$prefix/new" || die 3 "unpacking failed"
  fi
  [[ -e $prefix/new/site/$marker ]] || die 3 "$ARCHIVE holds no site/$marker"
  mv "$prefix/new/site" "$prefix/site"
  rmdir "$prefix/new"
  rm -f "$stage/$ARCHIVE"
  # The bundle has no .pyc (built on another Python); compile them on all cores now
  # rather than one module at a time in every first import.
  log "compiling .pyc"
  "$py" -m compileall -q -j0 "$prefix/site" >/dev/null || log "compileall reported errors (ignored)"
  echo "$ARCHIVE_SHA" >"$prefix/.installed"
}
