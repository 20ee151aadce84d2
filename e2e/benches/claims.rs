//! How fast claims become Ready: N shared PostgreSQL claims on a local server,
//! and N dedicated claims on kwok nodes, each from creation to all Ready, with
//! the process's peak RSS. `DBPS_BENCH_CLAIMS` sets N (default 30).

use std::time::{Duration, Instant};

use dbps_e2e::databases::{Kind, LocalServer};
use dbps_e2e::manifests::apply_yaml;
use dbps_e2e::{RunningOperator, TestContext};
use dbps_operator::api::{ClaimPhase, DatabaseClaim};
use kube::Api;

async fn all_ready(claims: &Api<DatabaseClaim>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let ready = claims
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase) == Some(ClaimPhase::Ready))
            .count();
        if ready == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {n} Ready after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn run(kind: &str, n: usize, server: Option<&LocalServer>) {
    let ctx = TestContext::new(&format!("bench-{kind}")).await.unwrap();
    let _operator = RunningOperator::start(&ctx, Duration::from_secs(300))
        .await
        .unwrap();
    let mut yaml = String::from(
        "apiVersion: dbps.io/v1alpha1\nkind: Service\nmetadata: { name: svc }\nspec: {}\n",
    );
    if let Some(server) = server {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: admin }}\nstringData: {{ username: {}, password: {} }}\n---\napiVersion: dbps.io/v1alpha1\nkind: DatabaseServer\nmetadata: {{ name: {}-pg }}\nspec: {{ engine: postgres, host: 127.0.0.1, port: {}, adminSecretRef: {{ namespace: {}, name: admin }} }}\n",
            server.admin_user, server.admin_password, ctx.namespace, server.port, ctx.namespace
        ));
    }
    apply_yaml(&ctx.client, &ctx.namespace, &yaml)
        .await
        .unwrap();
    let placement = match server {
        Some(_) => format!(", server: {{ name: {}-pg }}", ctx.namespace),
        None => String::new(),
    };
    let started = Instant::now();
    let claims: String = (0..n)
        .map(|i| {
            format!(
                "---\napiVersion: dbps.io/v1alpha1\nkind: DatabaseClaim\nmetadata: {{ name: c{i:03} }}\nspec: {{ serviceRef: {{ name: svc }}, engine: postgres{placement} }}\n"
            )
        })
        .collect();
    apply_yaml(&ctx.client, &ctx.namespace, &claims)
        .await
        .unwrap();
    all_ready(&ctx.api::<DatabaseClaim>(), n).await;
    let elapsed = started.elapsed();
    println!(
        "claims/{kind}: n={n} all_ready={:.1}s per_claim={:.0}ms claims_per_s={:.1} peak_rss={:.0}MiB",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / n as f64,
        n as f64 / elapsed.as_secs_f64(),
        peak_rss_mib()
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("DBPS_BENCH_CLAIMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let postgres = LocalServer::start(Kind::Postgres).await.unwrap();
    run("shared-postgres", n, Some(&postgres)).await;
    run("dedicated", n, None).await;
}
