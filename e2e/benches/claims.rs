//! The operator at scale. For each N, on a fresh control plane and fresh
//! PostgreSQL servers, with the operator binary as its own process (as it
//! runs in a pod):
//!
//! - the **PostgreSQL floor**: the same administration (database, owner and
//!   login roles, marks) issued directly at the operator's per-server
//!   concurrency, on a server of its own, once before the operator's run and
//!   once after it (the ratio is to their mean: this machine's disk and page
//!   cache make one floor vary up to several times within minutes);
//! - the **apiserver floor**: the writes a claim needs, of their kinds and
//!   with the contents the operator wrote, issued directly after its run,
//!   16 claims at a time: a copy of each claim created (the user's write,
//!   which the chart's policy gives the finalizer; without it, a write of
//!   its own), its binding Secret applied, its status written;
//! - the **joint floor**: both floors at once (fresh servers, another
//!   namespace), after the run: what the database and the control plane
//!   need for the claims when they share this machine's cores, as in the
//!   operator's run; over the database floor, the ratio even an operator
//!   that cost nothing would reach here;
//! - **N shared claims** from creation to all Ready: time, the operator's
//!   peak RSS (`VmHWM`) and CPU seconds, its reconciles, and its requests
//!   per claim from the apiserver's audit log (reads, writes, 429s);
//! - the **CPU per claim** of the database server (all its processes, as in
//!   the floors), of etcd and the apiserver, and of this bench process, from
//!   the first claim to all Ready: on a machine they all share, what the
//!   time to Ready is made of (`cores_busy`: all of it over the time to
//!   Ready; at the machine's number of cores, the run is bound by its CPU);
//! - the **steady state**: the operator's requests per claim in one pass
//!   over the N Ready claims with nothing changed, which is what a resync
//!   does (measured as the first pass of the operator started again, so
//!   the run needs no wait for the resync period).
//!
//! The operator runs with a resync longer than the run may take (its
//! default, 300 s, or the run's deadline when that is longer), so the
//! requests to Ready are those of provisioning.
//!
//! With `DBPS_BENCH_PLACEMENT=dedicated` the claims are dedicated (no
//! server): on this control plane no pod runs, so a run measures the
//! operator's Kubernetes side of N instances — from creation until every
//! claim has its admin Secret, NetworkPolicy, Service and StatefulSet and
//! waits for a ready replica (phase `Provisioning` with its endpoint) —
//! against an apiserver floor of five writes per claim (admin Secret,
//! NetworkPolicy, Service, StatefulSet, status; six with the finalizer when
//! no policy gives it). There is no
//! database floor: no database is made.
//!
//! With `DBPS_BENCH_SERVERS=k` the shared claims are spread over k servers
//! of the engine (claim i on server i mod k): what the operator and the
//! control plane do with N claims when no one server's own cost grows with
//! N. The database floor then runs on k fresh servers the same way, each at
//! the per-server concurrency.
//!
//! The chart's policy that gives each new claim the operator's finalizer is
//! installed, as `helm install` does; `DBPS_BENCH_FINALIZER_POLICY=off`
//! leaves it out (the operator then adds the finalizer with a write of its
//! own, and so does the apiserver floor).
//!
//! The database servers run on cores of their own: half of this process's
//! CPUs (the upper half) for them, the other half for the control plane,
//! the operator and this bench, as in a cluster, where a database server
//! does not share its node's cores with the apiserver, etcd or the
//! operator's pod. The floors run the same way, so the ratio to the
//! database floor says whether the operator keeps the database as busy as
//! the database alone would be. `DBPS_BENCH_CORES=shared` lets every
//! process run on every core instead (the run is then bound by the CPU all
//! of them need, which the joint floor shows); a machine of one core always
//! shares it.
//!
//! `DBPS_BENCH_CLAIMS` lists the sizes (default `200,1000`),
//! `DBPS_BENCH_RUNS` the runs of each (default 3); medians are printed last.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use dbps_e2e::control_plane::{ControlPlane, Options};
use dbps_e2e::databases::{Kind, LocalServer};
use dbps_e2e::process::{Process, allowed_cpus, cpu_seconds, pin_tree, tree_cpu_seconds};
use dbps_operator::api::{DatabaseClaim, DatabaseServer, Engine, READY};
use dbps_operator::children::FIELD_MANAGER;
use dbps_operator::controller::FINALIZER;
use dbps_operator::engines::{DEFAULT_CONNECTIONS_PER_SERVER, Grant};
use dbps_operator::servers::Servers;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const NAMESPACE: &str = "bench";
const OPERATOR_USER: &str = "dbps-bench-operator";
/// Resync of the operator under test: its default, or the run's deadline
/// when that is longer, so the requests to Ready are those of provisioning
/// (a run of 10 000 claims takes longer than 300 s). The steady state is
/// measured as one pass over the Ready claims (below).
fn resync(n: usize) -> Duration {
    Duration::from_secs(300).max(deadline(n))
}

/// How long N claims may take to be Ready.
fn deadline(n: usize) -> Duration {
    Duration::from_secs(1800).max(Duration::from_millis(400) * n as u32)
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
struct Sample {
    ready_s: f64,
    /// The database floor: the mean of one measured before and one after
    /// the operator's run (this machine's disk and page cache vary much
    /// within minutes; the two show how much).
    postgres_floor_s: f64,
    postgres_floor_before_s: f64,
    postgres_floor_after_s: f64,
    apiserver_floor_s: f64,
    /// The database floor and the apiserver floor run at the same time: the
    /// least any operator could take on this machine, where the database
    /// shares its cores with the control plane (its time is the work's, not
    /// a sum of the two).
    joint_floor_s: f64,
    rss_mib: f64,
    cpu_s: f64,
    /// CPU seconds of the database server (all its processes) from the
    /// first claim to all Ready, and in the floors (their mean).
    database_cpu_s: f64,
    floor_database_cpu_s: f64,
    /// CPU seconds of etcd and the apiserver, and of this bench process
    /// (its watch and creates), from the first claim to all Ready; and of
    /// etcd and the apiserver in the apiserver floor.
    control_plane_cpu_s: f64,
    floor_control_plane_cpu_s: f64,
    bench_cpu_s: f64,
    reconciles_per_claim: f64,
    writes_per_claim: f64,
    reads_per_claim: f64,
    throttled: f64,
    steady_writes: f64,
    steady_reads_per_claim: f64,
    /// How long the steady-state pass took: from the operator's start to its
    /// last request of the pass.
    steady_s: f64,
    /// [`Ratios`] of the run; of the medians, each the median of the runs'.
    ratios: Ratios,
}

/// All Ready over the database, apiserver and joint floors; the joint floor
/// and `cpu_bound` over the database floor.
type Ratios = [f64; 5];

fn ratios(s: &Sample) -> Ratios {
    [
        s.ready_s / s.postgres_floor_s,
        s.ready_s / s.apiserver_floor_s,
        s.ready_s / s.joint_floor_s,
        s.joint_floor_s / s.postgres_floor_s,
        cpu_bound(s) / s.postgres_floor_s,
    ]
}

/// `VmHWM` (peak resident set) of `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The operator's completed requests after `offset`, by kind: reads
/// (get, list), writes (create, update, patch, delete) and 429 answers;
/// with `DBPS_BENCH_DETAIL` set, each verb and resource's count is printed.
fn operator_requests(plane: &ControlPlane, offset: u64) -> (usize, usize, usize) {
    let (mut reads, mut writes, mut throttled) = (0, 0, 0);
    let mut detail: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for event in plane.audit_events_since(offset) {
        if event["user"]["username"] != OPERATOR_USER {
            continue;
        }
        let verb = event["verb"].as_str().unwrap_or_default();
        match verb {
            "get" | "list" => reads += 1,
            "create" | "update" | "patch" | "delete" | "deletecollection" => writes += 1,
            _ => {}
        }
        if event["responseStatus"]["code"] == 429 {
            throttled += 1;
        }
        let resource = event["objectRef"]["resource"].as_str().unwrap_or_default();
        let sub = event["objectRef"]["subresource"]
            .as_str()
            .unwrap_or_default();
        let entry = detail
            .entry(format!("{verb} {resource}/{sub}"))
            .or_default();
        entry.0 += 1;
        entry.1 += latency_ms(&event);
    }
    if std::env::var_os("DBPS_BENCH_DETAIL").is_some() {
        println!("  requests (count, total ms in the apiserver): {detail:?}");
    }
    (reads, writes, throttled)
}

/// How long the apiserver took over a request: from its receipt to the
/// audit event's stage (the response, for completed requests).
fn latency_ms(event: &serde_json::Value) -> u64 {
    let at = |field: &str| {
        event[field]
            .as_str()?
            .parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
    };
    match (at("requestReceivedTimestamp"), at("stageTimestamp")) {
        (Some(received), Some(stage)) => stage.duration_since(received).as_millis().max(0) as u64,
        _ => 0,
    }
}

/// How many requests the operator made after `offset`.
fn operator_request_count(plane: &ControlPlane, offset: u64) -> usize {
    plane
        .audit_events_since(offset)
        .iter()
        .filter(|e| e["user"]["username"] == OPERATOR_USER)
        .count()
}

/// The value of a metric line of the operator's `/metrics`.
async fn metric(port: u16, series: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The same administration the operator does for `n` claims, issued
/// directly at its per-server concurrency on as many fresh servers as the
/// run has (claim i on server i mod k, each server at that concurrency):
/// its seconds, and the database servers' CPU seconds.
async fn postgres_floor(n: usize) -> (f64, f64) {
    administer_directly(&floor_servers().await, n).await
}

/// Fresh servers of the run's engine, as many as the run has.
async fn floor_servers() -> Vec<LocalServer> {
    let mut servers_of_floor = Vec::new();
    for _ in 0..servers() {
        servers_of_floor.push(database_server().await);
    }
    servers_of_floor
}

/// A fresh server of the run's engine, on the database's cores.
async fn database_server() -> LocalServer {
    let server = LocalServer::start(engine().0).await.unwrap();
    if let (Some((_, database)), Some(pid)) = (cores(), server.pid()) {
        pin_tree(pid, database).unwrap();
    }
    server
}

/// The CPUs of the control plane, the operator and this bench, and those of
/// the database servers; `None` when all share all (`DBPS_BENCH_CORES=shared`,
/// or a single CPU).
fn cores() -> Option<&'static (Vec<usize>, Vec<usize>)> {
    static CORES: std::sync::OnceLock<Option<(Vec<usize>, Vec<usize>)>> =
        std::sync::OnceLock::new();
    CORES
        .get_or_init(|| {
            let cpus = allowed_cpus();
            if std::env::var("DBPS_BENCH_CORES").as_deref() == Ok("shared") || cpus.len() < 2 {
                return None;
            }
            let (control, database) = cpus.split_at(cpus.len() / 2);
            Some((control.to_vec(), database.to_vec()))
        })
        .as_ref()
}

/// The database floor's work on `servers_of_floor`: its seconds, and the
/// servers' CPU seconds.
async fn administer_directly(servers_of_floor: &[LocalServer], n: usize) -> (f64, f64) {
    let engine = engine().1;
    let k = servers_of_floor.len();
    let admin = Servers::default();
    let database_cpu = || -> f64 { servers_of_floor.iter().map(database_cpu_seconds).sum() };
    let cpu_before = database_cpu();
    let started = Instant::now();
    futures::future::join_all(servers_of_floor.iter().enumerate().map(|(j, server)| {
        let (admin, conn) = (&admin, server.admin_connection(engine));
        futures::stream::iter((j..n).step_by(k))
            .map(move |i| {
                let conn = conn.clone();
                async move {
                    let database = format!("{NAMESPACE}_c{i:05}");
                    let grant = Grant {
                        username: format!("{database}_app"),
                        password: dbps_operator::password::generate(),
                        database: database.clone(),
                    };
                    let claimant =
                        dbps_e2e::claims::claimant(NAMESPACE, &database, &database, "svc", false);
                    admin.ensure(&conn, &grant, &claimant).await.unwrap();
                }
            })
            .buffer_unordered(DEFAULT_CONNECTIONS_PER_SERVER)
            .collect::<Vec<_>>()
    }))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    (elapsed, database_cpu() - cpu_before)
}

/// CPU seconds of the database server's processes so far (PostgreSQL's
/// sessions are processes of their own, kept ones included).
fn database_cpu_seconds(server: &LocalServer) -> f64 {
    server.pid().map_or(0.0, tree_cpu_seconds)
}

/// CPU seconds of the control plane's processes (etcd, the apiserver) so far.
fn control_plane_cpu_seconds(plane: &ControlPlane) -> f64 {
    plane.pids().into_iter().map(tree_cpu_seconds).sum()
}

/// A namespace the apiserver floors write in (the operator does not watch it).
async fn floor_namespace(client: &kube::Client, namespace: &'static str) -> &'static str {
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": namespace } })).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    namespace
}

/// Runs `work` 16 at a time: its seconds, and the control plane's CPU
/// seconds meanwhile.
async fn sixteen_at_a_time(
    plane: &ControlPlane,
    work: impl Iterator<Item = impl std::future::Future<Output = ()>>,
) -> (f64, f64) {
    let control_plane_cpu = control_plane_cpu_seconds(plane);
    let started = Instant::now();
    futures::stream::iter(work)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    (
        elapsed,
        control_plane_cpu_seconds(plane) - control_plane_cpu,
    )
}

/// `writes` writes per claim (a create, then patches), 16 claims at a time:
/// its seconds, and the control plane's CPU seconds.
async fn apiserver_floor(
    plane: &ControlPlane,
    client: &kube::Client,
    n: usize,
    writes: usize,
) -> (f64, f64) {
    let namespace = floor_namespace(client, "bench-floor").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    sixteen_at_a_time(
        plane,
        (0..n).map(|i| {
            let secrets = secrets.clone();
            async move {
                let name = format!("c{i:05}");
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": { "name": name },
                    "stringData": { "username": "u", "password": "p", "uri": "postgresql://u:p@h:5432/d" }
                }))
                .unwrap();
                secrets.create(&PostParams::default(), &secret).await.unwrap();
                for step in 1..writes {
                    let patch = json!({ "metadata": { "labels": { format!("step{step}"): "done" } } });
                    secrets
                        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .unwrap();
                }
            }
        }),
    )
    .await
}

/// The apiserver floor of shared claims: the writes a claim needs, of the
/// kinds and with the contents the operator wrote, issued directly. For
/// each Ready claim of the run, a copy in namespace `bench-floor` is
/// created (the user's write; the finalizer policy gives it the finalizer,
/// or a write of its own does), its binding Secret applied and its status
/// written; 16 claims at a time, in `namespace`. Its seconds, and the
/// control plane's CPU seconds.
async fn claim_writes_floor(
    plane: &ControlPlane,
    client: &kube::Client,
    namespace: &'static str,
    written: Vec<(DatabaseClaim, Secret)>,
) -> (f64, f64) {
    let namespace = floor_namespace(client, namespace).await;
    let floor_claims: Api<DatabaseClaim> = Api::namespaced(client.clone(), namespace);
    let floor_secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    sixteen_at_a_time(
        plane,
        written.into_iter().map(|(claim, secret)| {
            let (claims, secrets) = (floor_claims.clone(), floor_secrets.clone());
            async move {
                let name = claim.name_any();
                let copy: DatabaseClaim = serde_json::from_value(json!({
                    "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim",
                    "metadata": { "name": name }, "spec": claim.spec
                }))
                .unwrap();
                let created = claims.create(&PostParams::default(), &copy).await.unwrap();
                if !created.finalizers().iter().any(|f| f == FINALIZER) {
                    let finalizer = json!({ "metadata": {
                        "finalizers": [FINALIZER], "resourceVersion": created.resource_version()
                    } });
                    claims
                        .patch(&name, &PatchParams::default(), &Patch::Merge(finalizer))
                        .await
                        .unwrap();
                }
                let binding = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {
                        "name": secret.name_any(),
                        "labels": secret.labels(),
                        "annotations": secret.annotations(),
                        "ownerReferences": [{
                            "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim",
                            "name": name, "uid": created.uid(),
                            "controller": true, "blockOwnerDeletion": true
                        }]
                    },
                    "type": secret.type_, "data": secret.data
                });
                secrets
                    .patch(
                        &secret.name_any(),
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(binding),
                    )
                    .await
                    .unwrap();
                claims
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": claim.status })),
                    )
                    .await
                    .unwrap();
            }
        }),
    )
    .await
}

/// The run's claims with their binding Secrets, as the operator wrote them.
async fn written(client: &kube::Client) -> Vec<(DatabaseClaim, Secret)> {
    let claims: Api<DatabaseClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let mut written = Vec::new();
    for claim in claims.list(&Default::default()).await.unwrap().items {
        let binding = claim.status.as_ref().and_then(|s| s.binding.as_ref());
        let secret = secrets
            .get(&binding.expect("a Ready claim's binding").name)
            .await
            .unwrap();
        written.push((claim, secret));
    }
    written
}

/// The engine of the run's server: `DBPS_BENCH_ENGINE` (`postgres`, the
/// default, or `mongodb`: FerretDB, whose databases are schemas of one
/// PostgreSQL database, so tens of thousands fit on one disk).
fn engine() -> (Kind, Engine) {
    match std::env::var("DBPS_BENCH_ENGINE").as_deref() {
        Ok("mongodb") => (Kind::FerretDb, Engine::Mongodb),
        Ok("influxdb") => (Kind::InfluxDb, Engine::Influxdb),
        _ => (Kind::Postgres, Engine::Postgres),
    }
}

/// Claims of one Service: more would make its Role (which names each
/// binding Secret), status and ownership table larger than Kubernetes
/// objects are meant to be, and no service has that many databases.
const CLAIMS_PER_SERVICE: usize = 1000;

/// How many Services the `n` claims of a run belong to.
fn services(n: usize) -> usize {
    n.div_ceil(CLAIMS_PER_SERVICE).max(1)
}

/// The name of Service number `i` of a run (`svc` for the first).
fn service_name(i: usize) -> String {
    match i {
        0 => "svc".into(),
        i => format!("svc-{i}"),
    }
}

/// Whether the chart's claim finalizer policy is installed
/// (`DBPS_BENCH_FINALIZER_POLICY=off` leaves it out).
fn finalizer_policy() -> bool {
    std::env::var("DBPS_BENCH_FINALIZER_POLICY").as_deref() != Ok("off")
}

/// Whether the floors are measured (`DBPS_BENCH_FLOORS=off` leaves them out,
/// for sizes where they would take longer than the operator's run).
fn floors() -> bool {
    std::env::var("DBPS_BENCH_FLOORS").as_deref() != Ok("off")
}

/// How many servers the shared claims are spread over: `DBPS_BENCH_SERVERS`
/// (default 1).
fn servers() -> usize {
    std::env::var("DBPS_BENCH_SERVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize)
        .max(1)
}

/// The `DatabaseServer` of server number `j` (`pg` when there is one).
fn server_name(j: usize) -> String {
    match servers() {
        1 => "pg".into(),
        _ => format!("pg-{j}"),
    }
}

/// Whether the run measures the database floor: shared claims, floors not
/// switched off.
fn database_floor() -> bool {
    floors() && !dedicated()
}

/// Whether the claims are dedicated: `DBPS_BENCH_PLACEMENT=dedicated`.
fn dedicated() -> bool {
    std::env::var("DBPS_BENCH_PLACEMENT").as_deref() == Ok("dedicated")
}

/// What a run waits for: Ready (shared), or every child of the instance
/// applied and the claim waiting for a ready replica (dedicated).
fn done(claim: &DatabaseClaim) -> bool {
    match dedicated() {
        false => ready(claim),
        true => claim.status.as_ref().is_some_and(|s| {
            s.phase == Some(dbps_operator::api::ClaimPhase::Provisioning) && s.endpoint.is_some()
        }),
    }
}

fn ready(claim: &DatabaseClaim) -> bool {
    claim
        .status
        .as_ref()
        .and_then(|s| dbps_operator::api::find_condition(&s.conditions, READY))
        .is_some_and(|c| c.status == "True")
}

async fn run(n: usize) -> Sample {
    let plane = ControlPlane::start_with(Options {
        workloads: false,
        // A dedicated claim's Service takes a cluster IP: room for 16384
        // (the default range has 254), still on loopback.
        service_cidr: "127.96.0.0/18",
        ..Options::default()
    })
    .await
    .unwrap();
    let client = plane.client().await.unwrap();
    dbps_e2e::operator::install_crds(&client).await.unwrap();
    let engine = engine().1;
    let (postgres_floor_before_s, floor_cpu_before) = match database_floor() {
        true => postgres_floor(n).await,
        false => (f64::NAN, f64::NAN),
    };
    // Shared claims' apiserver floor copies what the operator wrote, after its run.
    let (apiserver_floor_s, floor_control_plane_cpu_s) = match floors() && dedicated() {
        true => apiserver_floor(&plane, &client, n, 6 - usize::from(finalizer_policy())).await,
        false => (f64::NAN, f64::NAN),
    };
    let mut sample = Sample {
        postgres_floor_before_s,
        apiserver_floor_s,
        floor_control_plane_cpu_s,
        ..Sample::default()
    };

    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{ name: {NAMESPACE} }}\n");
    for service in 0..services(n) {
        yaml.push_str(&format!(
            "---\napiVersion: dbps.io/v1alpha1\nkind: Service\nmetadata: {{ name: {}, namespace: {NAMESPACE} }}\nspec: {{}}\n",
            service_name(service)
        ));
    }
    let mut servers_of_run = Vec::new();
    if !dedicated() {
        for _ in 0..servers() {
            servers_of_run.push(database_server().await);
        }
    }
    for (j, server) in servers_of_run.iter().enumerate() {
        let name = server_name(j);
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: admin-{name}, namespace: {NAMESPACE} }}\nstringData: {{ username: {}, password: {} }}\n---\napiVersion: dbps.io/v1alpha1\nkind: DatabaseServer\nmetadata: {{ name: {name} }}\nspec: {{ engine: {}, host: 127.0.0.1, port: {}, adminSecretRef: {{ namespace: {NAMESPACE}, name: admin-{name} }} }}\n",
            server.admin_user,
            server.admin_password,
            engine.as_str(),
            server.port
        ));
    }
    let database_cpu_now = || -> f64 { servers_of_run.iter().map(database_cpu_seconds).sum() };
    dbps_e2e::manifests::apply_yaml(&client, NAMESPACE, &yaml)
        .await
        .unwrap();
    if finalizer_policy() {
        dbps_e2e::operator::install_claim_finalizer_policy(&plane, &client, NAMESPACE)
            .await
            .unwrap();
    }

    let kubeconfig = plane
        .write_kubeconfig(OPERATOR_USER, &["system:masters"])
        .unwrap();
    let (operator, port) = start_operator(&plane, &kubeconfig, "dbps-operator", resync(n)).await;
    let pid = operator.pid().unwrap();

    let claims: Api<DatabaseClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let mut ready_names = std::collections::HashSet::new();
    let mut events = watcher(claims.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let offset = plane.audit_offset();
    let cpu_before = cpu_seconds(pid);
    let database_cpu = database_cpu_now();
    let control_plane_cpu = control_plane_cpu_seconds(&plane);
    let bench_cpu = cpu_seconds(std::process::id());
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let claims = claims.clone();
            async move {
                let service = service_name(i / CLAIMS_PER_SERVICE);
                let mut spec =
                    json!({ "serviceRef": { "name": service }, "engine": engine.as_str() });
                if !dedicated() {
                    spec["server"] = json!({ "name": server_name(i % servers()) });
                }
                let claim: DatabaseClaim = serde_json::from_value(json!({
                    "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim",
                    "metadata": { "name": format!("c{i:05}") },
                    "spec": spec
                }))
                .unwrap();
                claims.create(&PostParams::default(), &claim).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let deadline = deadline(n);
    while ready_names.len() < n {
        let next = tokio::time::timeout(
            deadline.saturating_sub(started.elapsed()),
            events.try_next(),
        );
        let claim = next
            .await
            .unwrap_or_else(|_| panic!("{} of {n} Ready after {deadline:?}", ready_names.len()))
            .unwrap()
            .expect("the watch goes on");
        if done(&claim) {
            ready_names.insert(claim.metadata.name.clone().unwrap_or_default());
        }
    }
    sample.ready_s = started.elapsed().as_secs_f64();
    sample.database_cpu_s = database_cpu_now() - database_cpu;
    sample.control_plane_cpu_s = control_plane_cpu_seconds(&plane) - control_plane_cpu;
    sample.bench_cpu_s = cpu_seconds(std::process::id()) - bench_cpu;
    // The Service's last gathered writes (at most 2 s later) belong to the
    // run, and so does each server's last count of its claims (written at
    // most every 10 s while only the count changes).
    tokio::time::sleep(Duration::from_secs(3)).await;
    if !dedicated() {
        counted(&client, n).await;
    }
    sample.cpu_s = cpu_seconds(pid) - cpu_before;
    let (reads, writes, throttled) = operator_requests(&plane, offset);
    let per = |x: usize| x as f64 / n as f64;
    sample.reads_per_claim = per(reads);
    sample.writes_per_claim = per(writes);
    sample.throttled = throttled as f64;
    sample.reconciles_per_claim =
        metric(port, "dbps_reconciles_total{controller=\"claim\"}").await / n as f64;

    sample.rss_mib = peak_rss_mib(pid);
    drop(operator);

    // The steady state: a pass over N Ready claims with nothing changed, as
    // a resync does it; here the first pass of the operator started again
    // (its watches' first lists count too: seven in all).
    let steady = plane.audit_offset();
    let pass_started = Instant::now();
    let (again, _) = start_operator(&plane, &kubeconfig, "dbps-operator-again", resync(n)).await;
    // The pass is over when the operator has asked nothing for 3 s; it may
    // take as long as the claims took to be Ready.
    let pass_deadline = Instant::now() + deadline;
    let (mut seen, mut since) = (0, Instant::now());
    while since.elapsed() < Duration::from_secs(3) {
        assert!(Instant::now() < pass_deadline, "the pass did not end");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = operator_request_count(&plane, steady);
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
    }
    sample.steady_s = since.duration_since(pass_started).as_secs_f64();
    let (reads, writes, _) = operator_requests(&plane, steady);
    sample.steady_reads_per_claim = per(reads);
    sample.steady_writes = writes as f64;
    drop(events);
    drop(again);
    // The run's claims and Secrets, read once for the two floors that copy them.
    let copies = match database_floor() {
        true => written(&client).await,
        false => Vec::new(),
    };
    if database_floor() {
        (sample.apiserver_floor_s, sample.floor_control_plane_cpu_s) =
            claim_writes_floor(&plane, &client, "bench-floor", copies.clone()).await;
    }
    drop(servers_of_run);
    let floor_cpu_after;
    (sample.postgres_floor_after_s, floor_cpu_after) = match database_floor() {
        true => postgres_floor(n).await,
        false => (f64::NAN, f64::NAN),
    };
    // Both floors at once, on fresh servers and in a namespace of their own:
    // what the database and the control plane need for the claims when they
    // share this machine, as they do in the operator's run.
    sample.joint_floor_s = f64::NAN;
    if database_floor() {
        let servers_of_floor = floor_servers().await;
        let started = Instant::now();
        futures::join!(
            administer_directly(&servers_of_floor, n),
            claim_writes_floor(&plane, &client, "bench-floor-joint", copies)
        );
        sample.joint_floor_s = started.elapsed().as_secs_f64();
    }
    sample.postgres_floor_s =
        (sample.postgres_floor_before_s + sample.postgres_floor_after_s) / 2.0;
    sample.floor_database_cpu_s = (floor_cpu_before + floor_cpu_after) / 2.0;
    sample.ratios = ratios(&sample);
    sample
}

/// Waits (up to 15 s) until each server's status counts its claims of the
/// run (claim i is on server i mod k).
async fn counted(client: &kube::Client, n: usize) {
    let api: Api<DatabaseServer> = Api::all(client.clone());
    let k = servers();
    let want = |j: usize| n / k + usize::from(j < n % k);
    for _ in 0..60 {
        let mut all = true;
        for j in 0..k {
            let status = api.get_status(&server_name(j)).await.unwrap().status;
            all &= status.is_some_and(|s| usize::try_from(s.claims) == Ok(want(j)));
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the servers' statuses do not count the run's claims");
}

/// The operator binary as its own process, Ready, and its metrics port.
async fn start_operator(
    plane: &ControlPlane,
    kubeconfig: &Path,
    name: &str,
    resync: Duration,
) -> (Process, u16) {
    let port = dbps_e2e::ports::free_port().unwrap();
    let operator = Process::spawn(
        name,
        &dbps_e2e::operator::binary(),
        &[
            "run".into(),
            format!("--namespace={NAMESPACE}"),
            format!("--resync-seconds={}", resync.as_secs()),
            format!("--listen=127.0.0.1:{port}"),
            "--log-format=text".into(),
        ],
        plane.dir(),
        |cmd| {
            let log = std::env::var("DBPS_BENCH_LOG").unwrap_or_else(|_| "warn".into());
            cmd.env("KUBECONFIG", kubeconfig).env("RUST_LOG", log);
        },
    )
    .unwrap();
    for _ in 0..300 {
        let up = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await;
        if up.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (operator, port)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn print(n: usize, label: &str, s: &Sample) {
    println!(
        "claims/{}-{}{} n={n} {label}: all_{}={:.1}s database_floor={:.1}s ({:.2}x; before {:.1}s, after {:.1}s) apiserver_floor={:.1}s ({:.2}x) \
         joint_floor={:.1}s ({:.2}x; {:.2}x the database floor) \
         peak_rss={:.0}MiB cpu={:.1}s reconciles/claim={:.1} writes/claim={:.1} reads/claim={:.1} 429s={:.0} \
         steady: writes={:.0} reads/claim={:.1} pass={:.1}s \
         cpu_ms/claim: operator={:.1} database={:.0} (floor {:.0}) control_plane={:.0} (floor {:.0}) bench={:.0} \
         cores_busy={:.2} cpu_bound={:.1}s ({:.2}x)",
        if dedicated() { "dedicated" } else { "shared" },
        engine().1.as_str(),
        match servers() {
            1 => String::new(),
            k => format!("x{k}"),
        },
        if dedicated() { "provisioning" } else { "ready" },
        s.ready_s,
        s.postgres_floor_s,
        s.ratios[0],
        s.postgres_floor_before_s,
        s.postgres_floor_after_s,
        s.apiserver_floor_s,
        s.ratios[1],
        s.joint_floor_s,
        s.ratios[2],
        s.ratios[3],
        s.rss_mib,
        s.cpu_s,
        s.reconciles_per_claim,
        s.writes_per_claim,
        s.reads_per_claim,
        s.throttled,
        s.steady_writes,
        s.steady_reads_per_claim,
        s.steady_s,
        s.cpu_s * 1000.0 / n as f64,
        s.database_cpu_s * 1000.0 / n as f64,
        s.floor_database_cpu_s * 1000.0 / n as f64,
        s.control_plane_cpu_s * 1000.0 / n as f64,
        s.floor_control_plane_cpu_s * 1000.0 / n as f64,
        s.bench_cpu_s * 1000.0 / n as f64,
        (s.cpu_s + s.database_cpu_s + s.control_plane_cpu_s + s.bench_cpu_s) / s.ready_s,
        cpu_bound(s),
        s.ratios[4],
    );
}

/// The least time any operator could bring the claims to Ready in on this
/// machine: the CPU of the database floor and of the apiserver floor (what
/// the database and the control plane must do for the claims, whoever asks)
/// spread over the cores each may use (over all of them when they share
/// them). Over the database floor, it is the ratio that even an operator
/// costing nothing and writing only what a claim needs would reach.
fn cpu_bound(s: &Sample) -> f64 {
    match cores() {
        Some((control, database)) => (s.floor_database_cpu_s / database.len() as f64)
            .max(s.floor_control_plane_cpu_s / control.len() as f64),
        None => {
            (s.floor_database_cpu_s + s.floor_control_plane_cpu_s) / allowed_cpus().len() as f64
        }
    }
}

#[tokio::main]
async fn main() {
    let sizes = dbps_e2e::sizes("DBPS_BENCH_CLAIMS", "200,1000");
    let runs: usize = std::env::var("DBPS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    assert!(
        Path::new(&dbps_e2e::operator::binary()).exists(),
        "build the operator first: cargo build -p dbps-operator --bin dbps-operator"
    );
    match cores() {
        Some((control, database)) => {
            // This process's threads, and so the control plane and the
            // operator it starts, on the control plane's cores.
            pin_tree(std::process::id(), control).unwrap();
            println!(
                "cores: database servers on {database:?}, control plane, operator and bench on {control:?}"
            );
        }
        None => println!("cores: all processes share {:?}", allowed_cpus()),
    }
    let mut medians = BTreeMap::new();
    for n in sizes {
        let mut samples = Vec::new();
        for r in 1..=runs {
            let s = run(n).await;
            print(n, &format!("run {r}/{runs}"), &s);
            samples.push(s);
        }
        let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let med = Sample {
            ready_s: m(|s| s.ready_s),
            postgres_floor_s: m(|s| s.postgres_floor_s),
            postgres_floor_before_s: m(|s| s.postgres_floor_before_s),
            postgres_floor_after_s: m(|s| s.postgres_floor_after_s),
            apiserver_floor_s: m(|s| s.apiserver_floor_s),
            joint_floor_s: m(|s| s.joint_floor_s),
            rss_mib: m(|s| s.rss_mib),
            cpu_s: m(|s| s.cpu_s),
            database_cpu_s: m(|s| s.database_cpu_s),
            floor_database_cpu_s: m(|s| s.floor_database_cpu_s),
            control_plane_cpu_s: m(|s| s.control_plane_cpu_s),
            floor_control_plane_cpu_s: m(|s| s.floor_control_plane_cpu_s),
            bench_cpu_s: m(|s| s.bench_cpu_s),
            reconciles_per_claim: m(|s| s.reconciles_per_claim),
            writes_per_claim: m(|s| s.writes_per_claim),
            reads_per_claim: m(|s| s.reads_per_claim),
            throttled: m(|s| s.throttled),
            steady_writes: m(|s| s.steady_writes),
            steady_reads_per_claim: m(|s| s.steady_reads_per_claim),
            steady_s: m(|s| s.steady_s),
            ratios: std::array::from_fn(|i| median(samples.iter().map(|s| s.ratios[i]).collect())),
        };
        medians.insert(n, med);
    }
    for (n, s) in &medians {
        print(*n, "median", s);
    }
}
