#!/usr/bin/env bash
# Installs what `make demo` and `make test` need and a machine may lack:
# Debian packages (make, a C compiler, git, Go, PostgreSQL with pg_partman
# and pgAudit, InfluxDB 1.x, Maven, Java and unzip for OpenSearch),
# a Go toolchain new enough for toolchain switching, rustfmt and clippy.
# Quick when everything is there. Prints the PATH to use (a fetched Go
# toolchain goes first) as its last line.
set -euo pipefail
step() { printf '[install-deps] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"


need=()
command -v make >/dev/null || need+=(make)
command -v cc >/dev/null || need+=(build-essential)
command -v git >/dev/null || need+=(git)
command -v go >/dev/null || need+=(golang-go)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
# Extensions the suites create through claims (pg_partman) and the audit log
# of the PCI profile (pgAudit), for Debian's PostgreSQL 15.
pg_major=15
[ -e "/usr/share/postgresql/$pg_major/extension/pg_partman.control" ] || need+=("postgresql-$pg_major-partman")
[ -e "/usr/share/postgresql/$pg_major/extension/pgaudit.control" ] || need+=("postgresql-$pg_major-pgaudit")
command -v influxd >/dev/null || need+=(influxdb)
command -v influx >/dev/null || need+=(influxdb-client)
# OpenSearch, assembled from Maven Central by build-opensearch.sh: Maven to
# resolve it, Java 17 to run it, unzip for its security plugin.
command -v mvn >/dev/null || need+=(maven)
command -v java >/dev/null || need+=(default-jre-headless)
command -v unzip >/dev/null || need+=(unzip)
# The real node: runc's seccomp support, and what kube-proxy and the
# NetworkPolicy enforcer (kube-router) call.
[ -e /usr/include/seccomp.h ] || need+=(libseccomp-dev)
command -v iptables >/dev/null || need+=(iptables)
command -v ipset >/dev/null || need+=(ipset)
command -v conntrack >/dev/null || need+=(conntrack)
# A static shell and network tools for the real node's test pods.
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

# Go 1.21+ fetches newer toolchains itself (GOTOOLCHAIN=auto). Debian's Go is
# older: take a current toolchain from the Go module proxy instead (the build
# scripts put it first on PATH when it is there).
go_minor=$(go version | sed -n 's/.*go1\.\([0-9]*\).*/\1/p')
if [ "${go_minor:-0}" -lt 21 ]; then
  toolchain=$GO_TOOLCHAIN
  dest=${DBPS_CACHE_DIR:-$HOME/.cache/dbps}/$toolchain
  if [ ! -x "$dest/bin/go" ]; then
    module="golang.org/toolchain@v0.0.1-$toolchain.linux-$(go env GOARCH)"
    dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$module" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    mkdir -p "$(dirname "$dest")" && cp -r "$dir" "$dest.tmp" && chmod -R u+w "$dest.tmp"
    chmod +x "$dest.tmp"/bin/* "$dest.tmp"/pkg/tool/*/*
    mv "$dest.tmp" "$dest"
  fi
  export PATH=$dest/bin:$PATH
fi
go version >&2

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy >&2
fi

echo "$PATH"
