//! `make demo`: the local control plane, local PostgreSQL, FerretDB (MongoDB
//! wire protocol) and InfluxDB registered as DatabaseServers, the dbps
//! operator, and the sample services' claims. When this machine can host a
//! real node, the dedicated examples run there as real database pods (the
//! operator then runs on the node's network); otherwise they stay on kwok's
//! fake nodes. Waits until every claim is settled, proves with the issued
//! credentials that each service reaches its own database and no other, and
//! keeps running until Ctrl-C.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dbps_e2e::databases::{Kind, LocalServer, PostgresOptions, connect_postgres, round_trip};
use dbps_e2e::manifests::apply_yaml;
use dbps_e2e::node::{NODE_NAME, Node};
use dbps_e2e::operator::install_crds;
use dbps_e2e::{ControlPlane, Error, Options};
use dbps_operator::api::{ClaimPhase, DatabaseClaim, Engine};
use dbps_operator::controller::{self, Config};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

const SYSTEM_NAMESPACE: &str = "dbps-system";
/// Namespace → manifests applied there.
const SAMPLES: [(&str, &str, &str); 4] = [
    (
        "shop",
        "sample-services/manifests/{ecommerce,search}.yaml",
        concat!(
            include_str!("../../../sample-services/manifests/ecommerce.yaml"),
            "\n---\n",
            include_str!("../../../sample-services/manifests/search.yaml"),
        ),
    ),
    (
        "iot",
        "sample-services/manifests/iot.yaml",
        include_str!("../../../sample-services/manifests/iot.yaml"),
    ),
    (
        "analytics",
        "sample-services/manifests/analytics.yaml",
        include_str!("../../../sample-services/manifests/analytics.yaml"),
    ),
    (
        "dedicated",
        "examples/*.yaml",
        concat!(
            include_str!("../../../examples/orders-postgres.yaml"),
            "\n---\n",
            include_str!("../../../examples/catalog-mongodb.yaml"),
            "\n---\n",
            include_str!("../../../examples/telemetry-influxdb.yaml"),
        ),
    ),
];

/// Why the dedicated examples stay on kwok, if they do.
fn real_node_unavailable() -> Option<String> {
    if std::env::var("DBPS_DEMO_REAL_NODE").is_ok_and(|v| v == "0") {
        return Some("DBPS_DEMO_REAL_NODE=0".into());
    }
    if let Some(why) = Node::unavailable() {
        return Some(why);
    }
    dbps_e2e::node::binaries().err().map(|e| e.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let started = Instant::now();
    let unavailable = real_node_unavailable();
    eprintln!(
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback ports ..."
    );
    let plane = ControlPlane::start_with(match unavailable {
        None => Options::real_node(),
        Some(_) => Options::default(),
    })
    .await?;
    let client = plane.client().await?;
    install_crds(&client).await?;
    let mut node = match &unavailable {
        Some(why) => {
            eprintln!(
                "dedicated instances stay on kwok's fake nodes (no database runs behind them): {why}"
            );
            None
        }
        None => {
            eprintln!(
                "starting a real node (containerd, kubelet, kube-proxy, kube-router, CoreDNS) for the dedicated instances ..."
            );
            let mut node = Node::start(
                &dbps_e2e::node::binaries().map_err(|e| Error::Binaries(e.to_string()))?,
            )
            .await?;
            node.join(&plane).await?;
            for image in [
                dbps_e2e::images::postgres("15")?,
                dbps_e2e::images::influxdb()?,
                dbps_e2e::images::ferretdb()?,
            ] {
                node.import(&image)?;
            }
            Some(node)
        }
    };

    eprintln!(
        "starting PostgreSQL, PostgreSQL for card data (TLS only, pgAudit), FerretDB, InfluxDB and OpenSearch on loopback ports ..."
    );
    let (postgres, postgres_pci, mongodb, influxdb, opensearch) = tokio::try_join!(
        LocalServer::start(Kind::Postgres),
        LocalServer::start_postgres(PostgresOptions {
            tls: true,
            plaintext_too: false,
            preload: vec!["pgaudit".into()],
        }),
        LocalServer::start(Kind::FerretDb),
        LocalServer::start(Kind::InfluxDb),
        LocalServer::start(Kind::OpenSearch),
    )?;
    let servers = [
        ("local-postgres", Engine::Postgres, &postgres),
        ("local-postgres-pci", Engine::Postgres, &postgres_pci),
        ("local-mongodb", Engine::Mongodb, &mongodb),
        ("local-influxdb", Engine::Influxdb, &influxdb),
        ("local-opensearch", Engine::Opensearch, &opensearch),
    ];
    create_namespace(&client, SYSTEM_NAMESPACE, false, None).await?;
    for (name, engine, server) in servers {
        // A server with TLS is registered with its CA.
        let (ca_secret, tls) = match &server.ca_pem {
            None => (String::new(), String::new()),
            Some(ca) => (
                format!(
                    "apiVersion: v1\nkind: Secret\nmetadata: {{ name: {name}-ca }}\nstringData: {{ ca.crt: {} }}\n---\n",
                    serde_json::to_string(ca).expect("a string")
                ),
                format!(
                    ", tls: {{ enabled: true, caSecretRef: {{ namespace: {SYSTEM_NAMESPACE}, name: {name}-ca }} }}"
                ),
            ),
        };
        let yaml = format!(
            "{ca_secret}apiVersion: v1\nkind: Secret\nmetadata: {{ name: {name}-admin }}\nstringData: {{ username: {}, password: {} }}\n---\n\
             apiVersion: dbps.io/v1alpha1\nkind: DatabaseServer\nmetadata: {{ name: {name} }}\n\
             spec: {{ engine: {}, host: 127.0.0.1, port: {}, adminSecretRef: {{ namespace: {SYSTEM_NAMESPACE}, name: {name}-admin }}{tls} }}\n",
            server.admin_user,
            server.admin_password,
            engine.as_str(),
            server.port,
        );
        apply_yaml(&client, SYSTEM_NAMESPACE, &yaml).await?;
        eprintln!(
            "  DatabaseServer {name}: {} on 127.0.0.1:{}",
            engine.as_str(),
            server.port
        );
    }

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = std::sync::Arc::new(dbps_operator::metrics::Metrics::default());
    // Resync bounds how long a hand-edited Secret goes unrepaired (Secrets
    // are not watched): short here, so the demo shows it.
    let resync: u64 = std::env::var("DBPS_RESYNC_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let operator = match node.as_mut() {
        // On the real node the operator runs on the node's network, where it
        // reaches the dedicated instances' Services and, through forwarders,
        // the local servers at the addresses they are registered with.
        Some(node) => {
            for server in [&postgres, &postgres_pci, &mongodb, &influxdb, &opensearch] {
                node.forward_to_host(server.port)?;
            }
            let program = std::env::current_exe()
                .map_err(|e| Error::io("locate the demo binary", e))?
                .with_file_name("dbps-operator");
            if !program.is_file() {
                return Err(Error::Binaries(format!(
                    "{} is missing: cargo build -p dbps-operator",
                    program.display()
                )));
            }
            node.run_operator_binary(
                &plane,
                &program,
                "dbps-operator",
                &["system:masters"],
                &[
                    format!("--resync-seconds={resync}"),
                    "--image-repository=mongodb=ferretdb".into(),
                ],
            )?;
            drop(stopped);
            None
        }
        None => {
            let config = Config {
                resync: std::time::Duration::from_secs(resync),
                ..Config::default()
            };
            Some(tokio::spawn(controller::run(
                client.clone(),
                config,
                metrics,
                async move {
                    let _ = stopped.await;
                },
            )))
        }
    };
    eprintln!("operator running; applying the samples ...");
    for (namespace, file, yaml) in SAMPLES {
        // The sample services' Deployments stay on kwok (the local processes
        // below stand in for them); dedicated instances go to the real node.
        let on = match (node.is_some(), namespace) {
            (false, _) => None,
            (true, "dedicated") => Some(format!("kubernetes.io/hostname={NODE_NAME}")),
            (true, _) => Some("type=kwok".to_string()),
        };
        create_namespace(&client, namespace, true, on.as_deref()).await?;
        // On the real node, the node's provisioner makes the volumes.
        let yaml = match (node.is_some(), namespace) {
            (true, "dedicated") => {
                let placement = dbps_e2e::cluster::Placement::real_node()?;
                dbps_e2e::manifests::dedicated(yaml, &placement).0
            }
            _ => yaml.to_string(),
        };
        let applied = apply_yaml(&client, namespace, &yaml).await?;
        eprintln!("  {namespace}: {file} → {} objects", applied.len());
    }

    let claims: Api<DatabaseClaim> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(180);
    let list = loop {
        let list = claims.list(&Default::default()).await?.items;
        // Claims become Ready, but for dedicated ones on kwok's fake nodes,
        // where no database answers the operator.
        let on_kwok = node.is_none();
        let ready = list.iter().all(|c| {
            let status = c.status.as_ref();
            status.and_then(|s| s.phase) == Some(ClaimPhase::Ready)
                || (on_kwok
                    && c.spec.server.is_none()
                    && status
                        .and_then(|s| s.conditions.first())
                        .is_some_and(|c| c.reason == "InstanceUnreachable"))
        });
        if (ready && !list.is_empty()) || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    print_claims(&list);

    // Prove isolation with the credentials each service was given.
    let mut bindings = Vec::new();
    for claim in list.iter().filter(|c| c.spec.server.is_some()) {
        let ns = claim.namespace().unwrap_or_default();
        let name = claim
            .status
            .as_ref()
            .and_then(|s| s.binding.as_ref())
            .map(|b| b.name.clone())
            .unwrap_or_default();
        let secret = Api::<Secret>::namespaced(client.clone(), &ns)
            .get(&name)
            .await?;
        let values: BTreeMap<String, String> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        let server = claim.spec.server.as_ref().map(|s| s.name.clone());
        bindings.push((
            format!("{ns}/{}", claim.spec.service_ref.name),
            claim.spec.engine,
            values,
            server.unwrap_or_default(),
        ));
    }
    let server_of = |name: &str| match name {
        "local-postgres-pci" => &postgres_pci,
        "local-mongodb" => &mongodb,
        "local-influxdb" => &influxdb,
        "local-opensearch" => &opensearch,
        _ => &postgres,
    };
    println!(
        "\nEach service's credentials against each database (own: must work; others: must be refused):"
    );
    let mut violations = 0;
    for (service, _, own, _) in &bindings {
        let mut line = format!("  {service:<18}");
        for (other, engine, target, server) in &bindings {
            let result = round_trip(
                server_of(server),
                *engine,
                &target["database"],
                &own["username"],
                &own["password"],
            )
            .await;
            let expected = service == other;
            let mark = match (result.is_ok(), expected) {
                (true, true) => "✔ own",
                (false, false) => "✘ refused",
                (true, false) => {
                    violations += 1;
                    "!! ALLOWED"
                }
                (false, true) => {
                    violations += 1;
                    "!! FAILED"
                }
            };
            line.push_str(&format!(" {other}:{mark}"));
        }
        println!("{line}");
    }
    println!(
        "  (local-mongodb is FerretDB v1, which authenticates users per database but has no roles: on it, a\n   user that logged in to its own database is not kept out of others. MongoDB enforces readWrite.)"
    );

    // Run the sample services as local processes with the credentials dbps issued them.
    let samples = run_samples(&client, &plane).await?;
    let url = |name: &str| samples.urls[name].clone();

    // The read-only grants, once the services made the tables they name.
    let deadline = Instant::now() + Duration::from_secs(60);
    let granting = loop {
        let list = claims.list(&Default::default()).await?.items;
        let granting: Vec<DatabaseClaim> = list
            .into_iter()
            .filter(|c| !c.spec.readers.is_empty())
            .collect();
        let complete = granting.iter().all(|c| {
            let readers = c
                .status
                .as_ref()
                .map(|s| s.readers.clone())
                .unwrap_or_default();
            readers.len() == c.spec.readers.len() && readers.iter().all(|r| r.waiting.is_empty())
        });
        if complete || Instant::now() > deadline {
            break granting;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("\nRead-only grants (spec.readers), tried with the credentials each grant issued:");
    for claim in &granting {
        let ns = claim.namespace().unwrap_or_default();
        let server = server_of(
            claim
                .spec
                .server
                .as_ref()
                .map(|s| s.name.as_str())
                .unwrap_or_default(),
        );
        for reader in claim.status.iter().flat_map(|s| &s.readers) {
            let secret = Api::<Secret>::namespaced(client.clone(), &reader.namespace)
                .get(&reader.binding)
                .await?;
            let v: BTreeMap<String, String> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            let (read, write) = try_reader(server, claim.spec.engine, &v, &reader.tables).await;
            let mut mark = |ok: bool, expected: bool| match (ok, expected) {
                (true, true) => "✔",
                (false, false) => "✘ refused",
                (true, false) => {
                    violations += 1;
                    "!! ALLOWED"
                }
                (false, true) => {
                    violations += 1;
                    "!! FAILED"
                }
            };
            let what = match claim.spec.engine {
                Engine::Postgres => reader.tables.join(", "),
                _ => "the database".into(),
            };
            let (read, write) = (mark(read, true), mark(write, false));
            println!(
                "  {}/{} reads {ns}/{} ({what}): read {read}, write {write}",
                reader.namespace,
                reader.service,
                claim.name_any(),
            );
        }
    }

    // The PCI-profiled claim: its Compliant condition, and the audit log.
    if let Some(payments) = claims_in(&client, "shop")
        .await?
        .into_iter()
        .find(|c| c.spec.profile.is_some())
    {
        let compliant = payments
            .status
            .as_ref()
            .and_then(|s| dbps_operator::api::find_condition(&s.conditions, "Compliant"))
            .map(|c| format!("{} ({}): {}", c.status, c.reason, c.message))
            .unwrap_or_else(|| "not checked yet".into());
        println!(
            "\nshop/{} has profile PCI on local-postgres-pci. Compliant = {compliant}",
            payments.name_any()
        );
        let audited = postgres_pci
            .log()
            .lines()
            .filter(|l| l.contains("AUDIT: SESSION"))
            .count();
        println!(
            "  pgAudit has logged {audited} statements so far: grep AUDIT {}",
            postgres_pci.dir().join("postgres.log").display()
        );
    }
    if violations > 0 {
        eprintln!("\n{violations} unexpected results: see above");
    }
    walk_through(&samples.urls).await;
    println!(
        "\nThe sample services run on loopback with their bindings (under {}):",
        samples.root.display()
    );
    for (name, u) in &samples.urls {
        println!("  {name:<10} {u}");
    }
    println!(
        "\nTry them:\n  curl -s -XPOST {c}/products -H 'content-type: application/json' -d '{{\"sku\":\"mug\",\"name\":\"Mug\",\"price_cents\":1200,\"attributes\":{{\"color\":\"red\"}}}}'\n  curl -s '{c}/products?color=red'\n  curl -s -XPOST {o}/orders -H 'content-type: application/json' -d '{{\"customer\":\"ada\",\"items\":[{{\"sku\":\"mug\",\"quantity\":2,\"unit_price_cents\":1200}}]}}'\n  curl -s {o}/orders                       # PENDING, then PAID (or CANCELLED above {p}/payments' limit)\n  curl -s {o}/orders/<id>/details          # the order composed with the catalog's products\n  curl -s {p}/payments\n  curl -s -XPOST {a}/rules -H 'content-type: application/json' -d '{{\"metric\":\"temperature\",\"op\":\"gt\",\"threshold\":30}}'\n  curl -s -XPOST {t}/readings -H 'content-type: application/json' -d '[{{\"device_id\":\"th-1\",\"metric\":\"temperature\",\"value\":31.5}}]'\n  curl -s '{t}/readings?device_id=th-1'\n  curl -s {a}/alerts\n  curl -s -XPOST {d}/devices -H 'content-type: application/json' -d '{{\"id\":\"th-1\",\"name\":\"Greenhouse\",\"kind\":\"thermometer\"}}'\n  curl -s -XPOST {r}/refresh                # reporting: orders, payments and telemetry aggregated into its warehouse\n  curl -s {r}/report\n  curl -s '{s}/search?q=mug'               # search: catalog's products, indexed from its events, full text",
        c = url("catalog"),
        o = url("orders"),
        p = url("payments"),
        a = url("alerts"),
        t = url("telemetry"),
        d = url("devices"),
        r = url("reporting"),
        s = url("search"),
    );

    let bin = dbps_e2e::binaries::dir().map_err(Error::Binaries)?;
    println!(
        "\nEverything is up after {:.1}s; the local control plane is at {server}.\n\n  export KUBECONFIG={kc}\n  export PATH={bin}:$PATH\n  kubectl get dbps -A\n  kubectl get databaseservers\n  kubectl annotate dbc -n shop payments-db dbps.io/rotate=now   # rotate its credentials\n\nThe operator resyncs every {resync}s (DBPS_RESYNC_SECONDS): a Secret edited by hand is repaired within that.\n\n{dedicated}\nComponent logs are in {dir}.\nPress Ctrl-C to stop and clean up.",
        started.elapsed().as_secs_f64(),
        server = plane.server_url(),
        kc = plane.kubeconfig_path().display(),
        bin = bin.display(),
        dir = plane.dir().display(),
        dedicated = match &node {
            Some(node) => format!(
                "Dedicated instances (namespace dedicated) run as real database pods on the node {NODE_NAME}\n(PostgreSQL 15, FerretDB and InfluxDB 1.6 images made from this machine's programs); the operator\nruns on the node's network and made their users over the wire. Pods and Service addresses live in\nthe node's network namespace: `nsenter --target {} --net` enters it.",
                node.holder_pid()
            ),
            None => "Dedicated instances (namespace dedicated) run on kwok's fake nodes: Kubernetes schedules them and\nreports them Ready, but no database process runs behind them, so the operator cannot make their\nusers (InstanceUnreachable); on a real node or cluster they become Ready.".to_string(),
        },
    );
    wait_for_shutdown().await;
    eprintln!("stopping ...");
    let _ = stop.send(());
    if let Some(operator) = operator {
        let _ = operator.await;
    }
    drop(node);
    drop(samples);
    drop((postgres, postgres_pci, mongodb, influxdb, opensearch));
    drop(plane);
    Ok(())
}

/// Creates namespace `name`, enforcing Pod Security `restricted` when asked,
/// its pods kept on nodes matching `node_selector` when given.
async fn create_namespace(
    client: &Client,
    name: &str,
    restricted: bool,
    node_selector: Option<&str>,
) -> Result<(), Error> {
    let mut labels = BTreeMap::new();
    if restricted {
        labels.insert(
            "pod-security.kubernetes.io/enforce".to_string(),
            "restricted".to_string(),
        );
    }
    let mut annotations = BTreeMap::new();
    if let Some(selector) = node_selector {
        annotations.insert("scheduler.alpha.kubernetes.io/node-selector", selector);
    }
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": labels, "annotations": annotations }
    }))
    .expect("static namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

fn print_claims(claims: &[DatabaseClaim]) {
    println!(
        "\n{:<10} {:<14} {:<9} {:<10} {:<15} {:<8} {:<24} ENDPOINT",
        "NAMESPACE", "CLAIM", "ENGINE", "SERVICE", "SERVER", "PHASE", "BINDING"
    );
    for c in claims {
        let status = c.status.clone().unwrap_or_default();
        println!(
            "{:<10} {:<14} {:<9} {:<10} {:<15} {:<8} {:<24} {}",
            c.namespace().unwrap_or_default(),
            c.name_any(),
            c.spec.engine.as_str(),
            c.spec.service_ref.name,
            c.spec
                .server
                .as_ref()
                .map(|s| s.name.as_str())
                .unwrap_or("(dedicated)"),
            status.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
            status.binding.map(|b| b.name).unwrap_or_default(),
            status
                .endpoint
                .map(|e| format!("{}:{}", e.host, e.port))
                .unwrap_or_default(),
        );
    }
}

/// One trip through the samples, printed: a product reaches search through
/// catalog's outbox, an order is paid through the saga (payments on the PCI
/// server), a reading is recorded, and reporting aggregates them.
async fn walk_through(urls: &BTreeMap<String, String>) {
    let http = reqwest::Client::new();
    let url = |name: &str, path: &str| format!("{}{path}", urls[name]);
    println!("\nA walk through the samples:");
    let product = serde_json::json!({ "sku": "mug", "name": "Red mug", "price_cents": 1200, "attributes": { "color": "red" } });
    let _ = http
        .post(url("catalog", "/products"))
        .json(&product)
        .send()
        .await;
    let order = serde_json::json!({ "customer": "ada", "items": [{ "sku": "mug", "quantity": 2, "unit_price_cents": 1200 }] });
    let placed: serde_json::Value = match http
        .post(url("orders", "/orders"))
        .json(&order)
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    let reading =
        serde_json::json!([{ "device_id": "th-1", "metric": "temperature", "value": 21.5 }]);
    let _ = http
        .post(url("telemetry", "/readings"))
        .json(&reading)
        .send()
        .await;
    let id = placed["id"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = String::new();
    let mut found = serde_json::Value::Null;
    while Instant::now() < deadline {
        let order: serde_json::Value = match http
            .get(url("orders", &format!("/orders/{id}")))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        status = order["status"].as_str().unwrap_or_default().to_string();
        found = match http.get(url("search", "/search?q=mug")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if status == "PAID" && found.as_array().is_some_and(|h| !h.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("  catalog → search (outbox, CQRS read view): GET /search?q=mug → {found}");
    println!("  orders → payments (saga; payments on the PCI server): order {id} is {status}");
    let report: serde_json::Value = match http.post(url("reporting", "/refresh")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    println!("  reporting (read-only grants → its warehouse): POST /refresh → {report}");
}

/// The claims of namespace `ns`.
async fn claims_in(client: &Client, ns: &str) -> Result<Vec<DatabaseClaim>, Error> {
    Ok(Api::<DatabaseClaim>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?
        .items)
}

/// Whether a reader's credentials `v` read (the granted tables, or the
/// database) and whether they write.
async fn try_reader(
    server: &LocalServer,
    engine: Engine,
    v: &BTreeMap<String, String>,
    tables: &[String],
) -> (bool, bool) {
    match engine {
        Engine::Postgres => {
            let Ok(client) =
                connect_postgres(server, &v["database"], &v["username"], &v["password"]).await
            else {
                return (false, false);
            };
            let mut read = !tables.is_empty();
            for table in tables {
                let sql = format!("SELECT count(*) FROM {table}");
                read &= client.query_one(&sql, &[]).await.is_ok();
            }
            let write = match tables.first() {
                Some(table) => client
                    .batch_execute(&format!("DELETE FROM {table} WHERE false"))
                    .await
                    .is_ok(),
                None => false,
            } || client
                .batch_execute("CREATE TABLE dbps_demo_probe (x int)")
                .await
                .is_ok();
            (read, write)
        }
        _ => {
            let http = reqwest::Client::new();
            let base = format!("http://127.0.0.1:{}", server.port);
            let auth = [
                ("db", v["database"].as_str()),
                ("u", v["username"].as_str()),
                ("p", v["password"].as_str()),
            ];
            let read = http
                .get(format!("{base}/query"))
                .query(&auth)
                .query(&[("q", "SELECT count(*) FROM readings")])
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let write = http
                .post(format!("{base}/write"))
                .query(&auth)
                .body("dbps_demo_probe value=1")
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (read, write)
        }
    }
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The sample services running as local processes, and the task that
/// keeps their binding files in step with the stable binding Secrets.
struct Samples {
    root: std::path::PathBuf,
    urls: BTreeMap<String, String>,
    processes: Vec<dbps_e2e::process::Process>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Samples {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.take() {
            task.abort();
        }
    }
}

/// Writes the values of Secret `ns/secret` as files under `root/<dir>/`, as
/// the kubelet projects a mounted Secret; whether a file changed.
async fn project_binding(
    client: &Client,
    root: &std::path::Path,
    ns: &str,
    secret: &str,
    dir: &str,
) -> Result<bool, Error> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(secret)
        .await?;
    let dir = root.join(dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create binding dir", e))?;
    let mut changed = false;
    for (key, value) in secret.data.unwrap_or_default() {
        let path = dir.join(&key);
        if std::fs::read(&path).ok().as_deref() != Some(value.0.as_slice()) {
            // A new file moved into place, so a reader never sees half of one.
            let staged = dir.join(format!(".{key}.new"));
            std::fs::write(&staged, &value.0).map_err(|e| Error::io("write binding", e))?;
            std::fs::rename(&staged, &path).map_err(|e| Error::io("write binding", e))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Writes each sample service's binding from the Secret its claim names and
/// starts `dbps-sample <service>` on a free loopback port.
async fn run_samples(client: &Client, plane: &ControlPlane) -> Result<Samples, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locate the demo binary", e))?;
    let program = exe.with_file_name("dbps-sample");
    if !program.is_file() {
        return Err(Error::Binaries(format!(
            "{} is missing: cargo build -p dbps-samples",
            program.display()
        )));
    }
    let root = plane.dir().join("bindings");
    let services = [
        ("shop", "orders"),
        ("shop", "catalog"),
        ("shop", "payments"),
        ("shop", "search"),
        ("iot", "devices"),
        ("iot", "telemetry"),
        ("iot", "alerts"),
        ("analytics", "reporting"),
    ];
    // Each service's stable binding, and reporting's read-only grants
    // (Secrets dbps wrote in its namespace): (namespace, Secret, directory).
    let mut projected: Vec<(String, String, String)> = services
        .iter()
        .map(|(ns, name)| {
            (
                ns.to_string(),
                format!("{name}-db-binding"),
                format!("{name}-db"),
            )
        })
        .collect();
    for (ns, claim) in [
        ("shop", "orders-db"),
        ("shop", "payments-db"),
        ("iot", "telemetry-db"),
    ] {
        projected.push((
            "analytics".into(),
            format!("{ns}-{claim}-reader-reporting"),
            format!("{claim}-reader"),
        ));
    }
    // The grants are issued once reporting's Service exists: wait for them.
    let secrets_in = |ns: &str| Api::<Secret>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (ns, secret, _) in &projected {
        while secrets_in(ns).get_opt(secret).await?.is_none() {
            if Instant::now() > deadline {
                return Err(Error::Wait(format!("Secret {ns}/{secret} was not issued")));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let mut urls = BTreeMap::new();
    for (_, name) in services {
        let port = dbps_e2e::ports::free_port()?;
        urls.insert(name.to_string(), format!("http://127.0.0.1:{port}"));
    }
    let mut samples = Samples {
        root: root.clone(),
        urls,
        processes: Vec::new(),
        refresher: None,
    };
    for (ns, secret, dir) in &projected {
        project_binding(client, &root, ns, secret, dir).await?;
    }
    for (_, name) in services {
        let listen = samples.urls[name].trim_start_matches("http://").to_string();
        let urls = samples.urls.clone();
        let root = root.clone();
        let process = dbps_e2e::process::Process::spawn(
            &format!("sample-{name}"),
            &program,
            &[name.to_string()],
            plane.dir(),
            move |cmd| {
                cmd.env("SERVICE_BINDING_ROOT", &root)
                    .env("LISTEN", &listen)
                    .env("PAYMENTS_URL", &urls["payments"])
                    .env("CATALOG_URL", &urls["catalog"])
                    .env("ORDERS_URL", &urls["orders"])
                    .env("ALERTS_URL", &urls["alerts"])
                    .env("SEARCH_URL", &urls["search"])
                    .env("REFRESH_SECONDS", "5");
            },
        )?;
        samples.processes.push(process);
    }
    // As the kubelet refreshes a mounted Secret: a rotation's new credentials
    // reach the running services' files, which they read again when they
    // open a new session.
    samples.refresher = Some(tokio::spawn({
        let (client, root) = (client.clone(), root.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                for (ns, secret, dir) in &projected {
                    if let Ok(true) = project_binding(&client, &root, ns, secret, dir).await {
                        eprintln!("  {ns}/{secret} changed: its files are written anew");
                    }
                }
            }
        }
    }));
    let http = reqwest::Client::new();
    for (name, url) in samples.urls.clone() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http.get(format!("{url}/healthz")).send().await, Ok(r) if r.status().is_success())
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Wait(format!(
                    "sample service {name} did not become healthy; see {}",
                    plane.dir().join(format!("sample-{name}.log")).display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(samples)
}
