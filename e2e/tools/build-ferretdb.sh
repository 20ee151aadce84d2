#!/usr/bin/env bash
# Provides FerretDB (a MongoDB wire-protocol server on SQLite), the MongoDB
# stand-in of the test suites, and prints the path of its binary as the last
# line of stdout. Built once from Go modules at the version in versions.env
# into ${DBPS_CACHE_DIR:-~/.cache/dbps}/ferretdb-<version>/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
# A Go toolchain fetched by install-deps.sh (when the system Go is too old).
fetched_go="${DBPS_CACHE_DIR:-$HOME/.cache/dbps}/$GO_TOOLCHAIN/bin"
[ -x "$fetched_go/go" ] && export PATH="$fetched_go:$PATH"
log() { printf '[build-ferretdb] %s\n' "$*" >&2; }

cache=${DBPS_CACHE_DIR:-$HOME/.cache/dbps}
dir="$cache/ferretdb-$FERRETDB_VERSION"
bin="$dir/ferretdb"
if [ -x "$bin" ]; then
  log "cached: $bin"
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { log "go is required to build FerretDB"; exit 1; }
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto} GOFLAGS=-buildvcs=false CGO_ENABLED=0
src="$dir/src"
rm -rf "$src" && mkdir -p "$src"
cd "$src"
go mod init dbps.local/ferretdb >/dev/null 2>&1
printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/FerretDB/FerretDB/cmd/ferretdb"\n' > tools.go
log "building FerretDB $FERRETDB_VERSION (a few minutes on first run)"
# The module leaves out build/version/version.txt (generated in FerretDB's own
# release build); build a copy of the module with that one file written.
module_dir=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
cp -r "$module_dir" ferretdb && chmod -R u+w ferretdb
echo "$FERRETDB_VERSION" > ferretdb/build/version/version.txt
# MongoDB 4.4+ ends a SCRAM conversation with done=true on the client's final
# message when the client asks for skipEmptyExchange, and the Rust driver
# requires it; FerretDB v1 answers done=false there and waits for an empty
# extra round. Report the conversation's state after the step instead.
continue_go=ferretdb/internal/handler/msg_saslcontinue.go
sed -i 's|"done", valid, // for compatibility.*$|"done", conv.Valid(),|' "$continue_go"
grep -q '"done", conv.Valid(),' "$continue_go" || { log "could not adapt $continue_go"; exit 1; }
go mod edit -require "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" -replace "github.com/FerretDB/FerretDB=./ferretdb"
go mod tidy >&2
go build -trimpath -ldflags "-s -w" -o "$bin.tmp" github.com/FerretDB/FerretDB/cmd/ferretdb
mv "$bin.tmp" "$bin"
log "  $("$bin" --version 2>&1 | sed -n 1p)"
echo "$bin"
