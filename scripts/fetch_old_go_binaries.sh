#!/usr/bin/env bash
# Fetch real Go binaries built by old Go releases (pclntab formats that no
# installed toolchain produces) from the npm registry: esbuild's per-platform
# package esbuild-linux-64 ships a statically linked Go executable.
#
#   <cache>/oldgo/esbuild-<version>-go<goversion>
#
# Idempotent: an entry whose binary already has the pinned sha256 is left
# alone, and nothing is printed. Each tarball is checked against its pinned
# sha512 (the registry's dist.integrity) before anything is extracted.
# Needs npm (Debian package `npm`); nothing is downloaded from outside the
# npm registry and no package scripts are run (`npm pack` only).
set -euo pipefail

CACHE="${NODE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/node-agent}"
DEST="$CACHE/oldgo"

# package  version  go-version  tarball-sha512(hex)  binary-sha256
# pclntab magic: go1.14/1.15 0xfffffffb, go1.16/1.17 0xfffffffa, go1.18 0xfffffff0.
ENTRIES=(
  "esbuild-linux-64 0.5.26 1.14.2 ad95f0b9765e26e16801220c3a731719ee9837646b8d9ed6683b81f900a26c3e0c8dbcb2aa6669656ed9066a902f16a33bffdc25635d7dc557b4d9f41d138250 78687da3b417590c74830660782a62c575f5b35fd8ce218c8b8657b5e0030cf1"
  "esbuild-linux-64 0.8.0 1.15 18e48412f57aff8c6bb7502ce36b8c0d3ce9f544b50b3fba2f8a9265bba41f35fe3a709525ae5920e6ee26deeaaa871421c5b2c0351e078f943efdc3bdfe38fe 5a9a5446416192bd829dd9a869d214c820b976d85738453811ad37a04cd35e2b"
  "esbuild-linux-64 0.8.57 1.16 fba0a78362fc79debf0d6392fadd838fcff9e2e22f5aaa4d836e54142dc23c0980624651fed08a12c207c8a794cef2c25ed67efa322cca5afb50cc0cbaf7932c c113262e26944f88d64ab35488983fc64d3215b8a7a4a39f4e5e55918250ed4c"
  "esbuild-linux-64 0.13.15 1.17.2 7822b390d48bcb035e413441c49450d23c510a5d9859d301dfe3e4585a360414180b998848b2152234e136d9fa1d436ab9ad699ef80fe715f49c76d96cf8f9a0 593df79f645e8c303491a3124a0d998c9c3e4dbef7eee5f9cc112cac46fe3d0a"
  "esbuild-linux-64 0.14.30 1.18 2d49e9ce832946a14e379127e2a123e8d5a2c87e9ad4af98daa60d2ab0b2e6a3d38c3a06fc459ea8ccfaf67f14bfba51baf0ca97714d189d5db9f4eb0398b4b3 2636b47b8e2af4da6eafc3747bde2693705e916d2da7b928160067791a83b029"
)

log() { printf '[fetch_old_go_binaries] %s\n' "$*" >&2; }

have_sha256() { # file expected-hex
  [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]
}

fetch_one() { # package version goversion tgz-sha512 bin-sha256
  local pkg="$1" ver="$2" gover="$3" tsha="$4" bsha="$5"
  local out="$DEST/esbuild-$ver-go$gover"
  have_sha256 "$out" "$bsha" && return 0

  if ! command -v npm >/dev/null 2>&1; then
    log "npm is not installed (apt-get install npm); cannot fetch $pkg@$ver"
    return 1
  fi
  local tmp rc=0
  tmp="$(mktemp -d "$DEST/.tmp-esbuild-$ver.XXXXXX")"
  fetch_into "$tmp" "$pkg" "$ver" "$tsha" "$bsha" "$out" || rc=1
  rm -rf "$tmp"
  return "$rc"
}

fetch_into() { # tmpdir package version tgz-sha512 bin-sha256 out
  local tmp="$1" pkg="$2" ver="$3" tsha="$4" bsha="$5" out="$6"
  log "npm pack $pkg@$ver -> $out"
  if ! (cd "$tmp" && npm pack --silent --ignore-scripts --pack-destination "$tmp" "$pkg@$ver" >"$tmp/npm.out" 2>"$tmp/npm.err"); then
    log "npm pack $pkg@$ver failed:"
    cat "$tmp/npm.err" >&2
    return 1
  fi
  local tgz="$tmp/$pkg-$ver.tgz"
  if [[ ! -f "$tgz" ]]; then
    log "npm pack did not produce $tgz"
    return 1
  fi
  local got
  got="$(sha512sum "$tgz" | cut -d' ' -f1)"
  if [[ "$got" != "$tsha" ]]; then
    log "sha512 mismatch for $pkg@$ver: got $got, want $tsha"
    return 1
  fi
  tar -xzf "$tgz" -C "$tmp" package/bin/esbuild || return 1
  if ! have_sha256 "$tmp/package/bin/esbuild" "$bsha"; then
    log "sha256 mismatch for the binary in $pkg@$ver"
    return 1
  fi
  chmod 0755 "$tmp/package/bin/esbuild"
  mv -f "$tmp/package/bin/esbuild" "$out"
}

mkdir -p "$DEST"
rc=0
for e in "${ENTRIES[@]}"; do
  # shellcheck disable=SC2086  # split the entry into its fields
  fetch_one $e || rc=1
done
exit "$rc"
