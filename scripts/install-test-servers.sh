#!/usr/bin/env bash
# Installs the real servers the conformance tests run against:
#
#   $REGISTRY_TESTENV/bin/etcd, etcdctl  etcd 3.5 from Debian trixie (etcd-server, etcd-client)
#   $REGISTRY_TESTENV/bin/consul         Consul 1.8 from Debian bullseye
#   $REGISTRY_TESTENV/bin/kube-apiserver built with Go from scripts/kube-apiserver
#   protoc + well-known types            Debian protobuf-compiler, libprotobuf-dev (system install)
#   nft                                  Debian nftables (system install): silent partitions
#
# REGISTRY_TESTENV defaults to $HOME/.cache/registry-testenv.
#
# The Debian packages are fetched with `apt-get download` through a private apt
# configuration under $REGISTRY_TESTENV/apt (own sources list, state, lists and
# cache dirs) and unpacked with `dpkg -x`; nothing is installed into the system
# and the machine's own apt sources are never modified. The Debian mirror is
# taken from the machine's apt sources (override: REGISTRY_DEBIAN_MIRROR).
#
# Idempotent: every step is skipped when its binary already exists and runs, so
# a second run takes seconds. The kube-apiserver build (first run only) takes
# 20-40 minutes on 2 cores; Go's module and build caches live under
# ${REGISTRY_GO_CACHE:-$HOME/.cache/registry-testenv/go}.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
KUBE_MOD_DIR="$REPO_ROOT/scripts/kube-apiserver"

TESTENV="${REGISTRY_TESTENV:-$HOME/.cache/registry-testenv}"
BIN="$TESTENV/bin"
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

# --- protoc -------------------------------------------------------------------

# etcd-client's build script runs protoc and needs the well-known types
# (google/protobuf/*.proto), which Debian ships in libprotobuf-dev.
if command -v protoc >/dev/null 2>&1 && [ -f /usr/include/google/protobuf/descriptor.proto ]; then
  log "protoc: already installed"
else
  log "installing protobuf-compiler and libprotobuf-dev (system packages)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show protobuf-compiler libprotobuf-dev >/dev/null 2>&1; then
    as_root apt-get update -q
  fi
  as_root apt-get install -y -q --no-install-recommends protobuf-compiler libprotobuf-dev
fi

# --- nftables -----------------------------------------------------------------

# `nft` makes the silent partitions of the cluster fault scenarios
# (conformance::env::partition): loopback packets dropped, never refused.
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

# --- kube-apiserver -----------------------------------------------------------

KUBE_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$KUBE_MOD_DIR/go.mod")"
[ -n "$KUBE_VERSION" ] || die "cannot read the k8s.io/kubernetes version from $KUBE_MOD_DIR/go.mod"

if [ -x "$BIN/kube-apiserver" ] &&
   [ "$("$BIN/kube-apiserver" --version 2>/dev/null)" = "Kubernetes $KUBE_VERSION" ]; then
  log "kube-apiserver: $KUBE_VERSION already built"
else
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
  minor="${KUBE_VERSION#v*.}"
  minor="${minor%%.*}"
  major="${KUBE_VERSION#v}"
  major="${major%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done

  cd "$KUBE_MOD_DIR"
  # All checksums are in the committed go.sum, so the checksum database is
  # normally not consulted. If it is needed but unreachable, retry with
  # GOSUMDB=off for this build only, relying on the committed go.sum.
  log "go mod download (kube-apiserver $KUBE_VERSION module graph)"
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
  log "building kube-apiserver $KUBE_VERSION with $(go version) (20-40 min on 2 cores on the first run)"
  go build -trimpath -ldflags "$ldflags" -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv -f "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
  cd - >/dev/null
fi

# --- summary ------------------------------------------------------------------

echo "etcd           $BIN/etcd  $(first_line "$BIN/etcd" --version)"
echo "etcdctl        $BIN/etcdctl  $(first_line "$BIN/etcdctl" version)"
echo "consul         $BIN/consul  $(first_line "$BIN/consul" version)"
echo "kube-apiserver $BIN/kube-apiserver  $("$BIN/kube-apiserver" --version)"
echo "protoc         $(command -v protoc)  $(protoc --version)"
echo "nft            $NFT  $nft_version"
