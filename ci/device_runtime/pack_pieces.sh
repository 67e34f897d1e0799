# shellcheck shell=bash
# Sourced (not run) by prepare.sh and cutlass_dsl_side.sh, on the build machine: the
# other end of staged_archive.sh. Needs step() from the caller.
#
# pack_pieces BUILD NAME PIECES PIECE_BYTES XZ_PRESET PYTHON BUILD_INFO
#   packs BUILD/site as BUILD/NAME (tar | xz, reproducible: sorted, mtime 0, owner
#   0), removes BUILD/site, splits the archive into PIECES/NAME.partNN of at most
#   PIECE_BYTES each (PIECES is emptied first) and writes PIECES/MANIFEST.sha256
#   and MANIFEST.json with `bundle.py manifest` run by PYTHON (it needs
#   `packaging`); BUILD_INFO is the JSON object recorded as the build. The archive
#   itself is removed once split. XZ_THREADS (default 2) sets xz -T.
pack_pieces() {
  local build=$1 name=$2 pieces=$3 piece_bytes=$4 xz_preset=$5 python=$6 info=$7 archive_sha
  step "pack (tar | xz $xz_preset)"
  tar -C "$build" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - site \
    | xz "$xz_preset" -T"${XZ_THREADS:-2}" >"$build/$name.tmp" || return 1
  mv "$build/$name.tmp" "$build/$name"
  rm -rf "${build:?}/site"
  archive_sha=$(sha256sum "$build/$name" | cut -d' ' -f1)

  step "split into pieces of at most $piece_bytes bytes ($pieces)"
  rm -rf "$pieces"
  mkdir -p "$pieces"
  split -b "$piece_bytes" -d -a 2 "$build/$name" "$pieces/$name.part" || return 1
  "$python" "$(dirname "${BASH_SOURCE[0]}")/bundle.py" manifest "$pieces" "$name" \
    --archive-sha256 "$archive_sha" --build-info "$info" || return 1
  rm -f "$build/$name"
}
