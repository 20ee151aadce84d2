#!/usr/bin/env bash
# `make e2e-kind`: the cluster suites (e2e/tests/cluster_*.rs) on a kind
# cluster, on a Docker host. Creates the cluster from kind-config.yaml (unless
# it exists), builds the operator and sample images, pulls the official
# database images the suites claim, loads every image into the cluster's
# nodes (the suites never pull: imagePullPolicy Never), and runs the same
# test code as the real node does here, against the kind kubeconfig.
#
#   KIND_CLUSTER     cluster name (default: dbps); KEEP_CLUSTER=1 keeps it after the run
#   DBPS_CLUSTER_{POSTGRES,INFLUXDB,MONGODB}_VERSION, DBPS_CLUSTER_BUSYBOX: the images used
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in kind docker cargo helm; do
  command -v "$tool" >/dev/null || { echo "e2e-kind needs $tool on PATH" >&2; exit 1; }
done
kind_version=$(kind version | sed -n 's/^kind v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
read -r major minor <<<"${kind_version:-0 0}"
if (( major == 0 && minor < 24 )); then
  echo "kind >= 0.24 is needed (its kindnetd enforces NetworkPolicy); found $(kind version)" >&2
  exit 1
fi

cluster=${KIND_CLUSTER:-dbps}
version=$(grep -m1 '^version = ' Cargo.toml | sed 's/^version = "\(.*\)"/\1/')
export DBPS_CLUSTER_POSTGRES_VERSION=${DBPS_CLUSTER_POSTGRES_VERSION:-15}
export DBPS_CLUSTER_INFLUXDB_VERSION=${DBPS_CLUSTER_INFLUXDB_VERSION:-1.8}
export DBPS_CLUSTER_MONGODB_VERSION=${DBPS_CLUSTER_MONGODB_VERSION:-7.0}
# shellcheck source=../tools/versions.env
export DBPS_CLUSTER_OPENSEARCH_VERSION=${DBPS_CLUSTER_OPENSEARCH_VERSION:-$(. e2e/tools/versions.env && echo "$OPENSEARCH_VERSION")}
export DBPS_CLUSTER_BUSYBOX=${DBPS_CLUSTER_BUSYBOX:-busybox:1.36}
export DBPS_CLUSTER_STORAGE_CLASS=${DBPS_CLUSTER_STORAGE_CLASS:-standard}

if ! kind get clusters | grep -x "$cluster" >/dev/null; then
  kind create cluster --name "$cluster" --config kind-config.yaml --wait 120s
fi
if [[ ${KEEP_CLUSTER:-0} != 1 ]]; then
  trap 'kind delete cluster --name "$cluster"' EXIT
fi

docker build -t "dbps.local/dbps-operator:$version" .
docker build -f sample-services/Dockerfile -t "ghcr.io/dbps-io/dbps-sample:$version" .
images=(
  "dbps.local/dbps-operator:$version"
  "ghcr.io/dbps-io/dbps-sample:$version"
  "postgres:$DBPS_CLUSTER_POSTGRES_VERSION"
  "influxdb:$DBPS_CLUSTER_INFLUXDB_VERSION"
  "mongo:$DBPS_CLUSTER_MONGODB_VERSION"
  "opensearchproject/opensearch:$DBPS_CLUSTER_OPENSEARCH_VERSION"
  "$DBPS_CLUSTER_BUSYBOX"
)
for image in "${images[@]:2}"; do
  docker pull "$image"
done
kind load docker-image --name "$cluster" "${images[@]}"

kubeconfig=$(mktemp)
trap 'rm -f "$kubeconfig"; [[ ${KEEP_CLUSTER:-0} == 1 ]] || kind delete cluster --name "$cluster"' EXIT
kind get kubeconfig --name "$cluster" >"$kubeconfig"
DBPS_CLUSTER_KUBECONFIG=$kubeconfig cargo test -p dbps-e2e \
  --test cluster_dedicated --test cluster_opensearch --test cluster_samples -- --test-threads=1 --nocapture
