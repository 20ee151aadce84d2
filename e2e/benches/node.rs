//! Dedicated claims on a real node: N dedicated PostgreSQL claims of one
//! Service, from creation to all Ready, with the operator installed by the
//! chart as a pod. Each instance is a real StatefulSet whose pod starts a
//! real server (initdb, first boot) that the operator then administers over
//! the wire, through its NetworkPolicy. Printed per N: the time to all
//! Ready, each claim's time to Ready (median and slowest, from its
//! creation to its Ready condition), the operator's peak RSS (`VmHWM` of
//! its process, found through its pod's cgroup) and its requests per claim
//! from the audit log. (Its reconciles are not counted: its metrics port
//! is in the node's network.)
//!
//! `DBPS_BENCH_NODE_CLAIMS` lists the sizes (default `10`), run one after
//! the other on one node, each size's claims deleted before the next.
//! Needs this machine's real node (root; `make test` builds its parts).

use std::time::{Duration, Instant};

use dbps_e2e::cluster::{Cluster, OPERATOR_NAMESPACE};
use dbps_e2e::fixtures::{claim, service, service_account};
use dbps_operator::api::{DatabaseClaim, READY};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

/// Seconds from a claim's creation to its Ready condition, once Ready.
fn ready_after(claim: &DatabaseClaim) -> Option<f64> {
    let ready = dbps_operator::api::find_condition(&claim.status.as_ref()?.conditions, READY)
        .filter(|c| c.status == "True")?;
    let created = claim.metadata.creation_timestamp.as_ref()?.0;
    let at: k8s_openapi::jiff::Timestamp = ready.last_transition_time.0;
    Some(at.duration_since(created).as_secs_f64())
}

async fn run(cluster: &Cluster, n: usize, operator_uid: &str) {
    let ctx = &cluster.ctx;
    let claims: Api<DatabaseClaim> = ctx.api();
    let prefix = format!("n{n}-");
    let offset = ctx.plane().audit_offset();
    let started = Instant::now();
    for i in 0..n {
        claim(
            ctx,
            &format!("{prefix}{i:03}"),
            cluster.dedicated("svc", "postgres", json!({})),
        )
        .await;
    }
    let deadline = Duration::from_secs(600).max(Duration::from_secs(60) * n as u32);
    let times = loop {
        assert!(
            started.elapsed() < deadline,
            "not all Ready after {deadline:?}"
        );
        let listed = claims.list(&ListParams::default()).await.unwrap();
        let ours: Vec<_> = listed
            .items
            .iter()
            .filter(|c| c.name_any().starts_with(&prefix))
            .collect();
        let ready: Vec<f64> = ours.iter().filter_map(|c| ready_after(c)).collect();
        if ready.len() == n {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let all_ready = started.elapsed().as_secs_f64();
    let (mut reads, mut writes) = (0usize, 0usize);
    let account = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:");
    for event in ctx.plane().audit_events_since(offset) {
        let user = event["user"]["username"].as_str().unwrap_or_default();
        if !user.starts_with(&account) {
            continue;
        }
        match event["verb"].as_str().unwrap_or_default() {
            "get" | "list" => reads += 1,
            "create" | "update" | "patch" | "delete" | "deletecollection" => writes += 1,
            _ => {}
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let rss = cluster
        .pod_process_peak_rss_mib(operator_uid, "dbps-operator")
        .map_or("unknown".to_string(), |m| format!("{m:.0}MiB"));
    println!(
        "node/dedicated-postgres n={n}: all_ready={all_ready:.1}s claim_ready_median={:.0}s claim_ready_slowest={:.0}s \
         operator_peak_rss={rss} writes/claim={:.1} reads/claim={:.1}",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        writes as f64 / n as f64,
        reads as f64 / n as f64,
    );

    // The size's instances go before the next size's come.
    for name in named(&claims, &prefix).await {
        let _ = claims.delete(&name, &DeleteParams::default()).await;
    }
    let sets: Api<StatefulSet> = ctx.api();
    let gone = Instant::now();
    while !(named(&sets, &prefix).await.is_empty() && named(&claims, &prefix).await.is_empty()) {
        assert!(gone.elapsed() < Duration::from_secs(300), "instances left");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The names of the objects of `api` that begin with `prefix`.
async fn named<K>(api: &Api<K>, prefix: &str) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let listed = api.list(&ListParams::default()).await.unwrap();
    listed
        .items
        .iter()
        .map(|o| o.name_any())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[tokio::main]
async fn main() {
    let sizes = dbps_e2e::sizes("DBPS_BENCH_NODE_CLAIMS", "10");
    let cluster = Cluster::start("bench-node").await.unwrap();
    let installed = Instant::now();
    cluster.install_operator().await.unwrap();
    println!(
        "node: operator pod Ready {:.1}s after helm install began",
        installed.elapsed().as_secs_f64()
    );
    let ctx = &cluster.ctx;
    service_account(ctx, "svc").await;
    service(ctx, "svc", json!({})).await;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), OPERATOR_NAMESPACE);
    let operator = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("the operator pod");
    let uid = operator.uid().unwrap_or_default();
    for n in sizes {
        run(&cluster, n, &uid).await;
    }
    cluster.finish().await;
}
