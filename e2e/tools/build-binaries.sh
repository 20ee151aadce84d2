#!/usr/bin/env bash
# Provides the local control plane binaries (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok, kubectl, helm) and prints the
# directory that holds them as the last line of stdout. With `--node`, it
# also provides the real node's binaries (kubelet, kube-proxy, containerd and
# its runc shim, ctr, runc, the CNI plugins bridge/host-local/loopback/portmap,
# CoreDNS, kube-router, pause) and prints their directory instead.
#
# - If $KUBEBUILDER_ASSETS is set, that directory is used as it is (envtest
#   convention); it must hold every binary listed above.
# - Otherwise every binary is built once from Go modules, at the versions in
#   versions.env, into ${DBPS_CACHE_DIR:-~/.cache/dbps}/bin-<versions>/.
#   A second run finds them and returns at once.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
# A Go toolchain fetched by install-deps.sh (when the system Go is too old).
fetched_go="${DBPS_CACHE_DIR:-$HOME/.cache/dbps}/$GO_TOOLCHAIN/bin"
[ -x "$fetched_go/go" ] && export PATH="$fetched_go:$PATH"

binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl helm)
node_binaries=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc bridge host-local loopback portmap coredns kube-router pause)
node=false
[ "${1:-}" = --node ] && node=true
log() { printf '[build-binaries] %s\n' "$*" >&2; }

check_dir() { # DIR [BINARY ...]: prints the missing ones
  local dir=$1 missing=()
  shift
  local list=("$@")
  [ ${#list[@]} -eq 0 ] && list=("${binaries[@]}")
  for b in "${list[@]}"; do [ -x "$dir/$b" ] || missing+=("$b"); done
  if [ ${#missing[@]} -gt 0 ]; then
    printf '%s\n' "${missing[@]}"
    return 1
  fi
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && ! $node; then
  if ! missing=$(check_dir "$KUBEBUILDER_ASSETS"); then
    log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks: $(echo $missing)"
    exit 1
  fi
  log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

cache=${DBPS_CACHE_DIR:-$HOME/.cache/dbps}
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
bin="$cache/bin-$key"
node_key="k8s-${KUBERNETES_VERSION}_containerd-${CONTAINERD_VERSION}_runc-${RUNC_VERSION}_cni-${CNI_PLUGINS_VERSION}_coredns-${COREDNS_VERSION}_kube-router-${KUBE_ROUTER_VERSION}_pause-${PAUSE_VERSION}"
node_bin="$cache/node-$node_key"
if ! $node && check_dir "$bin" >/dev/null; then
  log "cached: $bin"
  echo "$bin"
  exit 0
fi
if $node && check_dir "$node_bin" "${node_binaries[@]}" >/dev/null; then
  log "cached: $node_bin"
  echo "$node_bin"
  exit 0
fi

command -v go >/dev/null || { log "go is required to build the control plane"; exit 1; }
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto} GOFLAGS=-buildvcs=false CGO_ENABLED=0
build="$cache/src-$key"
mkdir -p "$bin" "$build"
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# new_module DIR PATH: an empty Go module to build a tool in.
new_module() {
  rm -rf "$1" && mkdir -p "$1"
  (cd "$1" && go mod init "dbps.local/$2" >/dev/null 2>&1)
}

# --- Kubernetes: k8s.io/kubernetes with every staging module replaced by its
# published v0.x.y twin (the monorepo's own go.mod points them at ./staging).
build_kubernetes() { # DEST BINARY ...
  local dest=$1 todo=()
  shift
  for b in "$@"; do [ -x "$dest/$b" ] || todo+=("$b"); done
  [ ${#todo[@]} -eq 0 ] && return 0
  local dir="$build/kubernetes" staging="v0.${KUBERNETES_VERSION#v1.}"
  log "kubernetes $KUBERNETES_VERSION (staging $staging): resolving modules"
  new_module "$dir" kubernetes
  local gomod
  gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  (
    cd "$dir"
    go mod edit -require "k8s.io/kubernetes@$KUBERNETES_VERSION"
    grep -oE '^[[:space:]]*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk '{print $1}' | while read -r m; do
      go mod edit -replace "$m=$m@$staging"
    done
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
    go mod tidy -e >&2
  )
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  done
  for b in "${todo[@]}"; do
    log "building $b $KUBERNETES_VERSION (several minutes on first run)"
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$dest/$b.tmp" "k8s.io/kubernetes/cmd/$b")
    mv "$dest/$b.tmp" "$dest/$b"
  done
}

# --- etcd: a two-line main around go.etcd.io/etcd/server/v3/etcdmain.
build_etcd() {
  [ -x "$bin/etcd" ] && return 0
  local dir="$build/etcd"
  log "building etcd $ETCD_VERSION"
  new_module "$dir" etcd
  cat > "$dir/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$dir" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 && go mod tidy >&2 \
    && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" .)
  mv "$bin/etcd.tmp" "$bin/etcd"
}

# --- kwok and helm: their own main packages, built inside a wrapper module so
# the pinned version is exact and the version variables can be stamped.
build_tool() { # name module version package ldflags
  local name=$1 module=$2 version=$3 pkg=$4 ldflags=$5
  [ -x "$bin/$name" ] && return 0
  local dir="$build/$name"
  log "building $name $version"
  new_module "$dir" "$name"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" > "$dir/tools.go"
  (cd "$dir" && go get "$module@$version" >&2 && go mod tidy >&2 \
    && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
}

# A node binary: package `pkg` at `version`, built with the dependency
# versions its module was released with (no `go mod tidy`, which would raise
# them), into the node directory.
build_node_tool() { # name package version ldflags [tags]
  local name=$1 pkg=$2 version=$3 ldflags=$4 tags=${5:-}
  [ -x "$node_bin/$name" ] && return 0
  local dir="$build/node-$name"
  log "building $name $version"
  new_module "$dir" "$name"
  (cd "$dir" && go get "$pkg@$version" >&2 \
    && go build -trimpath -tags "$tags" -ldflags "-s -w $ldflags" -o "$node_bin/$name.tmp" "$pkg")
  mv "$node_bin/$name.tmp" "$node_bin/$name"
}

build_etcd
build_tool kwok sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBERNETES_VERSION"
k8s_minor=${KUBERNETES_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
# The Kubernetes version `helm template` assumes without a cluster.
build_tool helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
build_kubernetes "$bin" kube-apiserver kube-controller-manager kube-scheduler kubectl

# --- The real node.
build_coredns() { # a CoreDNS with only the plugins the node's Corefile uses
  [ -x "$node_bin/coredns" ] && return 0
  local dir="$build/coredns"
  log "building coredns $COREDNS_VERSION (trimmed)"
  new_module "$dir" coredns
  cat > "$dir/main.go" <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	"github.com/coredns/coredns/coremain"
)

// The plugins, in the order CoreDNS runs them; no forward: names outside
// the cluster are not resolved.
var directives = []string{"bind", "errors", "log", "health", "ready", "kubernetes", "cache", "loadbalance"}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
GO
  (cd "$dir" && go get "github.com/coredns/coredns@$COREDNS_VERSION" >&2 && go mod tidy >&2 \
    && go build -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" -o "$node_bin/coredns.tmp" .)
  mv "$node_bin/coredns.tmp" "$node_bin/coredns"
}

build_pause() { # the pause binary from the Kubernetes sources, static
  [ -x "$node_bin/pause" ] && return 0
  local src
  src=$(cd "$build/kubernetes" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  log "building pause $PAUSE_VERSION"
  cc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION" -o "$node_bin/pause.tmp" "$src/build/pause/linux/pause.c"
  strip "$node_bin/pause.tmp"
  mv "$node_bin/pause.tmp" "$node_bin/pause"
}

build_node() {
  mkdir -p "$node_bin"
  build_kubernetes "$node_bin" kubelet kube-proxy
  build_pause
  local ctrd=github.com/containerd/containerd/v2
  for b in containerd containerd-shim-runc-v2 ctr; do
    build_node_tool "$b" "$ctrd/cmd/$b" "$CONTAINERD_VERSION" \
      "-X $ctrd/version.Version=$CONTAINERD_VERSION -X $ctrd/version.Revision=$CONTAINERD_VERSION" \
      "no_btrfs no_devmapper no_zfs"
  done
  # runc needs cgo and libseccomp (seccomp profiles are enforced by it).
  CGO_ENABLED=1 build_node_tool runc github.com/opencontainers/runc "$RUNC_VERSION" \
    "-X main.version=${RUNC_VERSION#v}" "seccomp urfave_cli_no_docs"
  local cni=github.com/containernetworking/plugins
  for p in main/bridge ipam/host-local main/loopback meta/portmap; do
    build_node_tool "${p#*/}" "$cni/plugins/$p" "$CNI_PLUGINS_VERSION" \
      "-X $cni/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION"
  done
  build_coredns
  local kr=github.com/cloudnativelabs/kube-router/v2
  build_node_tool kube-router "$kr/cmd/kube-router" "$KUBE_ROUTER_VERSION" \
    "-X $kr/pkg/version.Version=$KUBE_ROUTER_VERSION -X $kr/pkg/version.BuildDate=$build_date"
}

if $node; then
  build_node
  if ! missing=$(check_dir "$node_bin" "${node_binaries[@]}"); then
    log "missing after build: $(echo $missing)"
    exit 1
  fi
  for b in kubelet kube-proxy containerd ctr runc coredns kube-router; do
    log "  $b: $("$node_bin/$b" --version 2>&1 | sed -n 1p)"
  done
  echo "$node_bin"
  exit 0
fi

if ! missing=$(check_dir "$bin"); then
  log "missing after build: $(echo $missing)"
  exit 1
fi
for b in "${binaries[@]}"; do
  case $b in
    kubectl) v=$("$bin/$b" version --client 2>&1 | sed -n 1p) ;;
    helm) v=$("$bin/$b" version --short 2>&1) ;;
    *) v=$("$bin/$b" --version 2>&1 | sed -n 1p) ;;
  esac
  log "  $b: $v"
done
echo "$bin"
