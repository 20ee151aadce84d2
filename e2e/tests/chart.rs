//! The Helm chart on the real control plane: it lints and renders, rejects bad
//! values, installs under Pod Security `restricted`, and its ClusterRole is
//! exactly enough for the operator; its admission policy keeps pods off other
//! services' credentials.

use std::path::PathBuf;
use std::time::Duration;

use dbps_e2e::claims::{phase_is, reason_is};
use dbps_e2e::databases::{Kind, LocalServer};
use dbps_e2e::operator::{MUTATING_POLICY_API, TEST_LABEL, chart_dir};
use dbps_e2e::process::Process;
use dbps_e2e::{RunningOperator, TestContext};
use dbps_operator::api::{ClaimPhase, DatabaseClaim};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

const RELEASE: &str = "dbps-operator";
const RELEASE_NAMESPACE: &str = "dbps-system";
/// The identity of the chart's ServiceAccount.
const OPERATOR_USER: &str = "system:serviceaccount:dbps-system:dbps-operator";
const OPERATOR_GROUPS: [&str; 3] = [
    "system:serviceaccounts",
    "system:serviceaccounts:dbps-system",
    "system:authenticated",
];

fn chart() -> String {
    chart_dir().canonicalize().unwrap().display().to_string()
}

fn run(ctx: &TestContext, tool: &str, args: &[&str]) -> (bool, String) {
    let out = ctx.plane().tool(tool, args).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// `helm install` once per test binary, into a namespace enforcing Pod Security `restricted`.
async fn installed(ctx: &TestContext) {
    INSTALLED
        .get_or_init(|| async {
            let (ok, out) = run(ctx, "kubectl", &["create", "namespace", RELEASE_NAMESPACE]);
            assert!(ok, "{out}");
            let (ok, out) = run(
                ctx,
                "kubectl",
                &[
                    "label",
                    "namespace",
                    RELEASE_NAMESPACE,
                    "pod-security.kubernetes.io/enforce=restricted",
                ],
            );
            assert!(ok, "{out}");
            let (ok, out) = run(
                ctx,
                "helm",
                &[
                    "install",
                    RELEASE,
                    &chart(),
                    "--namespace",
                    RELEASE_NAMESPACE,
                    "--wait",
                    "--timeout",
                    "2m",
                ],
            );
            assert!(ok, "helm install failed:\n{out}");
        })
        .await;
}

#[tokio::test]
async fn chart_lints_renders_and_rejects_bad_values() {
    let ctx = TestContext::new("chart-render").await.unwrap();
    let (ok, out) = run(&ctx, "helm", &["lint", &chart(), "--strict"]);
    assert!(ok, "{out}");

    let (ok, defaults) = run(
        &ctx,
        "helm",
        &[
            "template",
            RELEASE,
            &chart(),
            "--namespace",
            RELEASE_NAMESPACE,
            "--api-versions",
            MUTATING_POLICY_API,
        ],
    );
    assert!(ok, "{defaults}");
    for kind in [
        "ClusterRole",
        "Deployment",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "Role",
    ] {
        assert!(
            defaults.contains(&format!("kind: {kind}\n")),
            "{kind} missing"
        );
    }
    assert!(!defaults.contains("kind: ServiceMonitor"));
    // A read-only root filesystem, and a small writable /tmp in memory (the
    // MongoDB driver reads a server's CA from a file).
    for line in [
        "readOnlyRootFilesystem: true",
        "- name: tmp\n          mountPath: /tmp\n",
        "- name: tmp\n        emptyDir:\n          medium: Memory\n",
    ] {
        assert!(defaults.contains(line), "{line:?} missing:\n{defaults}");
    }
    // The finalizer policy binds in every namespace the operator watches:
    // all of them by default.
    let binding = |rendered: &str| -> String {
        rendered
            .split("\n---\n")
            .find(|d| d.contains("kind: MutatingAdmissionPolicyBinding\n"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(!binding(&defaults).is_empty(), "{defaults}");
    assert!(!binding(&defaults).contains("matchResources"), "{defaults}");
    // A cluster that does not serve the API (before Kubernetes 1.36) gets
    // everything else, and the operator adds the finalizer itself.
    let (ok, older) = run(&ctx, "helm", &["template", RELEASE, &chart()]);
    assert!(ok, "{older}");
    assert!(!older.contains("kind: MutatingAdmissionPolicy"), "{older}");
    assert!(
        older.contains("kind: ValidatingAdmissionPolicy\n"),
        "{older}"
    );

    let values = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        values.path(),
        "replicaCount: 2\nwatchNamespace: shop\nlogFormat: text\nleaderElection: { enabled: false }\n\
         metrics: { serviceMonitor: { enabled: true, interval: 15s, labels: { release: prom } } }\n\
         admissionPolicy: { enabled: false }\n",
    )
    .unwrap();
    let path = values.path().display().to_string();
    let template = |path: &str| {
        run(
            &ctx,
            "helm",
            &[
                "template",
                RELEASE,
                &chart(),
                "-f",
                path,
                "--api-versions",
                MUTATING_POLICY_API,
            ],
        )
    };
    let (ok, custom) = template(&path);
    assert!(ok, "{custom}");
    assert!(custom.contains("kind: ServiceMonitor"));
    assert!(custom.contains("- --namespace=shop"));
    assert!(custom.contains("replicas: 2"));
    assert!(!custom.contains("--leader-election"));
    assert!(!custom.contains("kind: ValidatingAdmissionPolicy"));
    assert!(!custom.contains("name: dbps-operator-leader-election"));
    // Watching one namespace, new claims of that namespace only get the
    // finalizer: one of another namespace would keep a finalizer no
    // operator removes.
    assert!(
        binding(&custom).contains(
            "  matchResources:\n    namespaceSelector:\n      matchLabels:\n        kubernetes.io/metadata.name: shop"
        ),
        "{custom}"
    );
    std::fs::write(values.path(), "claimFinalizerPolicy: { enabled: false }\n").unwrap();
    let (ok, without) = template(&path);
    assert!(ok, "{without}");
    assert!(!without.contains("kind: MutatingAdmissionPolicy"));
    assert!(without.contains("kind: ValidatingAdmissionPolicy\n"));

    for (bad, expect) in [
        ("replicaCount: 0\n", "replicaCount"),
        ("logFormat: xml\n", "logFormat"),
        ("watchNamespace: Not_A_Namespace\n", "watchNamespace"),
        (
            "admissionPolicy: { validationActions: [Reject] }\n",
            "validationActions",
        ),
        ("unknownSetting: true\n", "unknownSetting"),
        (
            "claimFinalizerPolicy: { enabled: maybe }\n",
            "claimFinalizerPolicy",
        ),
    ] {
        std::fs::write(values.path(), bad).unwrap();
        let (ok, out) = run(&ctx, "helm", &["template", RELEASE, &chart(), "-f", &path]);
        assert!(!ok, "accepted {bad}");
        assert!(
            out.contains("values don't meet the specifications of the schema")
                && out.contains(expect),
            "{bad}: {out}"
        );
    }
}

#[tokio::test]
async fn chart_crds_are_the_generated_ones() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let chart =
        std::fs::read_to_string(root.join("charts/dbps-operator/crds/dbps.io.yaml")).unwrap();
    assert_eq!(
        chart,
        dbps_operator::api::crds_yaml(),
        "run `make crds`: charts/dbps-operator/crds drifted"
    );
}

#[tokio::test]
async fn the_operator_works_with_exactly_the_charts_permissions() {
    let ctx = TestContext::new("chart-rbac").await.unwrap();
    installed(&ctx).await;
    // The chart's Deployment passed Pod Security `restricted` and its pod runs on a kwok node.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), RELEASE_NAMESPACE);
    let deployment = deployments.get(RELEASE).await.unwrap();
    assert_eq!(deployment.status.unwrap().ready_replicas, Some(1));

    let _operator = RunningOperator::start_as(
        &ctx,
        Duration::from_secs(300),
        OPERATOR_USER,
        &OPERATOR_GROUPS,
    )
    .await
    .unwrap();
    let postgres = LocalServer::start(Kind::Postgres).await.unwrap();
    let ns = &ctx.namespace;
    let manifests = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{ name: pg-admin }}
stringData: {{ username: {user}, password: {password} }}
---
apiVersion: dbps.io/v1alpha1
kind: DatabaseServer
metadata: {{ name: {ns}-pg, labels: {{ {TEST_LABEL}: {ns} }} }}
spec: {{ engine: postgres, host: 127.0.0.1, port: {port}, adminSecretRef: {{ namespace: {ns}, name: pg-admin }},
        namespaceSelector: {{ matchLabels: {{ kubernetes.io/metadata.name: {ns} }} }} }}
---
apiVersion: dbps.io/v1alpha1
kind: Service
metadata: {{ name: shop }}
spec: {{}}
---
apiVersion: dbps.io/v1alpha1
kind: DatabaseClaim
metadata: {{ name: pg-dedicated }}
spec: {{ serviceRef: {{ name: shop }}, engine: postgres, deletionPolicy: Delete }}
---
apiVersion: dbps.io/v1alpha1
kind: DatabaseClaim
metadata: {{ name: mongo-dedicated }}
spec: {{ serviceRef: {{ name: shop }}, engine: mongodb }}
---
apiVersion: dbps.io/v1alpha1
kind: DatabaseClaim
metadata: {{ name: influx-dedicated }}
spec: {{ serviceRef: {{ name: shop }}, engine: influxdb }}
---
apiVersion: dbps.io/v1alpha1
kind: DatabaseClaim
metadata: {{ name: pg-shared }}
spec: {{ serviceRef: {{ name: shop }}, engine: postgres, server: {{ name: {ns}-pg }}, deletionPolicy: Delete,
        rotation: {{ gracePeriodSeconds: 1 }} }}
"#,
        user = postgres.admin_user,
        password = postgres.admin_password,
        port = postgres.port,
    );
    let offset = ctx.plane().audit_offset();
    dbps_e2e::manifests::apply_yaml(&ctx.client, ns, &manifests)
        .await
        .unwrap();
    let claims = ctx.api::<DatabaseClaim>();
    // Dedicated claims get every object (their pods run no database on
    // kwok, so the operator reports it cannot reach them); the shared one is Ready.
    for name in ["pg-dedicated", "mongo-dedicated", "influx-dedicated"] {
        ctx.wait_for(
            &claims,
            name,
            "dedicated claim provisioned under the chart's RBAC",
            reason_is("InstanceUnreachable"),
        )
        .await;
    }
    ctx.wait_for(
        &claims,
        "pg-shared",
        "claim Ready under the chart's RBAC",
        phase_is(ClaimPhase::Ready),
    )
    .await;
    // The chart's policy gave each claim the finalizer as it was created:
    // the operator wrote none of them but for their status.
    for claim in claims.list(&Default::default()).await.unwrap().items {
        assert_eq!(claim.finalizers(), [dbps_operator::controller::FINALIZER]);
    }
    let claim_writes: Vec<String> = ctx
        .plane()
        .audit_events_since(offset)
        .into_iter()
        .filter(|e| e["user"]["username"] == OPERATOR_USER)
        .filter(|e| e["objectRef"]["resource"] == "databaseclaims")
        .filter(|e| e["objectRef"]["subresource"].is_null())
        .filter(|e| !matches!(e["verb"].as_str(), Some("get" | "list" | "watch")))
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect();
    assert!(claim_writes.is_empty(), "{claim_writes:#?}");
    // Rotation (writes the stable binding again; the second one deletes the
    // first rotation's Secret once its grace period is over) and deletion
    // (drops a volume) work too.
    for (value, generation) in [("1", 1), ("2", 2)] {
        dbps_e2e::fixtures::request_rotation(&ctx, "pg-shared", value).await;
        ctx.wait_for(
            &claims,
            "pg-shared",
            "rotated, grace period over",
            move |c: Option<&DatabaseClaim>| {
                c.and_then(|c| c.status.as_ref()?.credentials.as_ref())
                    .is_some_and(|c| c.generation == generation && c.previous.is_none())
            },
        )
        .await;
    }
    let secrets = ctx.api::<k8s_openapi::api::core::v1::Secret>();
    ctx.wait_gone(
        &secrets,
        "pg-shared-binding-1",
        "rotated-out Secret deleted",
    )
    .await;
    let stable = dbps_e2e::fixtures::secret(&ctx, "pg-shared-binding")
        .await
        .unwrap();
    let in_force = dbps_e2e::fixtures::secret(&ctx, "pg-shared-binding-2")
        .await
        .unwrap();
    assert_eq!(
        stable, in_force,
        "the stable binding holds the credentials in force"
    );
    claims
        .delete("pg-dedicated", &Default::default())
        .await
        .unwrap();
    ctx.wait_gone(
        &claims,
        "pg-dedicated",
        "claim deleted under the chart's RBAC",
    )
    .await;

    // Without the StatefulSet rule a dedicated claim cannot be provisioned, and says why.
    let roles: Api<ClusterRole> = Api::all(ctx.client.clone());
    let role = roles.get(RELEASE).await.unwrap();
    let full = role.rules.clone().unwrap();
    let without: Vec<_> = full
        .iter()
        .filter(|r| {
            !r.resources
                .iter()
                .flatten()
                .any(|res| res == "statefulsets")
        })
        .cloned()
        .collect();
    assert_eq!(without.len() + 1, full.len());
    let patch = |rules: &Vec<k8s_openapi::api::rbac::v1::PolicyRule>| json!({ "rules": rules });
    roles
        .patch(
            RELEASE,
            &PatchParams::default(),
            &Patch::Merge(patch(&without)),
        )
        .await
        .unwrap();
    let claim = "apiVersion: dbps.io/v1alpha1\nkind: DatabaseClaim\nmetadata: { name: late }\nspec: { serviceRef: { name: shop }, engine: postgres }\n";
    dbps_e2e::manifests::apply_yaml(&ctx.client, ns, claim)
        .await
        .unwrap();
    let failed = ctx
        .wait_for(&claims, "late", "ApplyFailed", reason_is("ApplyFailed"))
        .await;
    let message = failed.status.unwrap().conditions[0].message.clone();
    assert!(
        message.contains("statefulsets") && message.contains("forbidden"),
        "{message}"
    );
    // Putting the rule back heals it.
    roles
        .patch(
            RELEASE,
            &PatchParams::default(),
            &Patch::Merge(patch(&full)),
        )
        .await
        .unwrap();
    ctx.wait_for(
        &claims,
        "late",
        "claim provisioned once the rule is back",
        reason_is("InstanceUnreachable"),
    )
    .await;
}

#[tokio::test]
async fn a_claim_carries_the_finalizer_from_its_creation_and_once() {
    let ctx = TestContext::new("chart-finalizer").await.unwrap();
    installed(&ctx).await;
    // No operator runs here: what the claims carry is the policy's doing.
    let claims = ctx.api::<DatabaseClaim>();
    let finalizer = dbps_operator::controller::FINALIZER;
    let claim = |name: &str, finalizers: &[&str]| -> DatabaseClaim {
        serde_json::from_value(json!({
            "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim",
            "metadata": { "name": name, "finalizers": finalizers },
            "spec": { "serviceRef": { "name": "shop" }, "engine": "postgres" }
        }))
        .unwrap()
    };
    for (name, asked, carried) in [
        ("plain", &[][..], &[finalizer][..]),
        ("listed", &[finalizer][..], &[finalizer][..]),
        (
            "other",
            &["example.com/keep"][..],
            &["example.com/keep", finalizer][..],
        ),
    ] {
        let created = claims
            .create(&PostParams::default(), &claim(name, asked))
            .await
            .unwrap();
        assert_eq!(created.finalizers(), carried, "{name}");
    }
    // Only a creation is changed: a user who takes the finalizer off later
    // (the operator puts it back, or removes it on deletion) is not
    // overruled by the policy.
    let off = json!({ "metadata": { "finalizers": null } });
    for name in ["plain", "listed", "other"] {
        let patched = claims
            .patch(name, &PatchParams::default(), &Patch::Merge(&off))
            .await
            .unwrap();
        assert!(patched.finalizers().is_empty(), "{name}");
    }
    // The operator puts it back, once (their Service does not even exist).
    let operator = RunningOperator::start(&ctx, Duration::from_secs(300))
        .await
        .unwrap();
    for name in ["plain", "listed", "other"] {
        ctx.wait_for(
            &claims,
            name,
            "the finalizer taken off by hand is put back",
            move |c: Option<&DatabaseClaim>| {
                c.is_some_and(|c| c.finalizers().iter().filter(|f| *f == finalizer).count() == 1)
            },
        )
        .await;
    }
    operator.stop().await;
}

fn pod(name: &str, service: Option<&str>, account: &str, spec: serde_json::Value) -> Pod {
    let mut labels = serde_json::Map::new();
    if let Some(s) = service {
        labels.insert("dbps.io/service".into(), json!(s));
    }
    let mut pod = json!({
        "metadata": { "name": name, "labels": labels },
        "spec": { "serviceAccountName": account, "containers": [{ "name": "app", "image": "app:1" }] }
    });
    let spec = spec.as_object().unwrap().clone();
    for (k, v) in spec {
        if k == "container" {
            pod["spec"]["containers"][0]
                .as_object_mut()
                .unwrap()
                .extend(v.as_object().unwrap().clone());
        } else {
            pod["spec"][k] = v;
        }
    }
    serde_json::from_value(pod).unwrap()
}

#[tokio::test]
async fn the_admission_policy_keeps_pods_off_other_services_credentials() {
    let ctx = TestContext::new("chart-admission").await.unwrap();
    installed(&ctx).await;
    let _operator = RunningOperator::start_as(
        &ctx,
        Duration::from_secs(300),
        OPERATOR_USER,
        &OPERATOR_GROUPS,
    )
    .await
    .unwrap();
    let manifests = "
apiVersion: v1
kind: ServiceAccount
metadata: { name: orders }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: payments-api }
---
apiVersion: dbps.io/v1alpha1
kind: Service
metadata: { name: orders }
spec: {}
---
apiVersion: dbps.io/v1alpha1
kind: DatabaseClaim
metadata: { name: orders-db }
spec: { serviceRef: { name: orders }, engine: postgres }
---
apiVersion: dbps.io/v1alpha1
kind: Service
metadata: { name: payments }
spec: { serviceAccountName: payments-api }
";
    dbps_e2e::manifests::apply_yaml(&ctx.client, &ctx.namespace, manifests)
        .await
        .unwrap();
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for(
        &claims,
        "orders-db",
        "claim provisioned",
        reason_is("InstanceUnreachable"),
    )
    .await;
    let tables = ctx.api::<ConfigMap>();
    let table = ctx
        .wait_for(
            &tables,
            "dbps-bindings-orders",
            "ownership table",
            |c: Option<&ConfigMap>| {
                c.and_then(|c| c.data.as_ref())
                    .is_some_and(|d| d.contains_key("secret.orders-db-binding"))
            },
        )
        .await;
    let data = table.data.unwrap();
    assert_eq!(data["secret.orders-db-binding"], "orders");
    assert_eq!(data["secret.orders-db-admin"], "claim:orders-db");
    assert_eq!(data["account.orders"], "orders");
    let table = ctx
        .wait_for(
            &tables,
            "dbps-bindings-payments",
            "ownership table",
            |c: Option<&ConfigMap>| {
                c.and_then(|c| c.data.as_ref())
                    .is_some_and(|d| d.contains_key("account.payments"))
            },
        )
        .await;
    assert_eq!(table.data.unwrap()["account.payments"], "payments-api");

    let pods = ctx.api::<Pod>();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let try_create = |p: Pod| {
        let (pods, dry_run) = (pods.clone(), dry_run.clone());
        async move { pods.create(&dry_run, &p).await }
    };
    let secret_volume =
        json!({ "volumes": [{ "name": "b", "secret": { "secretName": "orders-db-binding" } }] });
    // The policy takes effect a moment after its parameters exist.
    let mut rejected = None;
    for _ in 0..100 {
        match try_create(pod(
            "p1",
            Some("payments"),
            "payments-api",
            secret_volume.clone(),
        ))
        .await
        {
            Err(kube::Error::Api(s)) if s.message.contains("dbps:") => {
                rejected = Some(s);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let status = rejected.expect("a payments pod mounting the orders binding was admitted");
    assert!(
        status.message.contains(
            "is service payments and references Secret(s) orders-db-binding owned by service orders"
        ),
        "{}",
        status.message
    );

    let foreign = [
        (
            "env valueFrom",
            json!({ "container": { "env": [{ "name": "PW", "valueFrom": { "secretKeyRef": { "name": "orders-db-binding", "key": "password" } } }] } }),
        ),
        (
            "envFrom",
            json!({ "container": { "envFrom": [{ "secretRef": { "name": "orders-db-binding" } }] } }),
        ),
        (
            "projected volume",
            json!({ "volumes": [{ "name": "b", "projected": { "sources": [{ "secret": { "name": "orders-db-binding" } }] } }] }),
        ),
    ];
    for (how, spec) in foreign {
        let err = try_create(pod("p2", Some("payments"), "payments-api", spec))
            .await
            .expect_err(how);
        assert!(
            err.to_string().contains("owned by service orders"),
            "{how}: {err}"
        );
    }
    // The instance's admin Secret is for the instance's own pods only.
    let admin_volume =
        json!({ "volumes": [{ "name": "a", "secret": { "secretName": "orders-db-admin" } }] });
    let err = try_create(pod("p7", Some("orders"), "orders", admin_volume))
        .await
        .expect_err("admin Secret admitted");
    assert!(
        err.to_string()
            .contains("owned by the database instance of claim orders-db"),
        "{err}"
    );
    let unlabelled = try_create(pod("p3", None, "default", secret_volume.clone())).await;
    assert!(unlabelled.is_err_and(|e| e.to_string().contains("has no dbps.io/service label")));

    // A pod claiming to be orders must run as orders' account.
    let impostor = try_create(pod(
        "p4",
        Some("orders"),
        "payments-api",
        secret_volume.clone(),
    ))
    .await;
    let err = impostor.expect_err("orders pod under payments' account admitted");
    assert!(
        err.to_string()
            .contains("pods of service orders must run as ServiceAccount orders, not payments-api"),
        "{err}"
    );

    // Orders' own pod, and a pod that references no binding, are admitted.
    try_create(pod("p5", Some("orders"), "orders", secret_volume))
        .await
        .unwrap();
    try_create(pod("p6", Some("payments"), "payments-api", json!({})))
        .await
        .unwrap();

    // A table forged by someone who may write ConfigMaps here, labelled like
    // the operator's and putting payments in front of orders' Secret: the
    // policy reads it beside orders' table and a pod must pass both, so it
    // refuses more pods (orders' own, once in effect) and lets none through.
    let forged: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "forged-bindings",
            "labels": { "app.kubernetes.io/managed-by": "dbps-operator", "app.kubernetes.io/component": "ownership" },
        },
        "data": { "secret.orders-db-binding": "payments" },
    }))
    .unwrap();
    tables
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    let own_pod = || {
        pod(
            "p8",
            Some("orders"),
            "orders",
            json!({ "volumes": [{ "name": "b", "secret": { "secretName": "orders-db-binding" } }] }),
        )
    };
    let mut in_effect = false;
    for _ in 0..100 {
        if try_create(own_pod()).await.is_err() {
            in_effect = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(in_effect, "the forged table was never read");
    let err = try_create(pod(
        "p9",
        Some("payments"),
        "payments-api",
        json!({ "volumes": [{ "name": "b", "secret": { "secretName": "orders-db-binding" } }] }),
    ))
    .await
    .expect_err("the forged table let payments mount orders' binding");
    assert!(err.to_string().contains("owned by service orders"), "{err}");
    tables
        .delete("forged-bindings", &Default::default())
        .await
        .unwrap();
    let mut admitted = false;
    for _ in 0..100 {
        if try_create(own_pod()).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "orders' pod refused after the forged table went");

    // A deleted Service takes its entries out of the table.
    let services = ctx.api::<dbps_operator::api::Service>();
    services
        .delete("payments", &Default::default())
        .await
        .unwrap();
    ctx.wait_gone(&services, "payments", "Service deleted")
        .await;
    ctx.wait_gone(&tables, "dbps-bindings-payments", "its table deleted")
        .await;
    let table = tables
        .get("dbps-bindings-orders")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(table["account.orders"], "orders");
}

/// A `dbps-operator run` process under the chart's ServiceAccount identity.
struct OperatorProcess {
    process: Process,
    port: u16,
}

impl OperatorProcess {
    fn start(ctx: &TestContext, identity: &str, extra: &[&str]) -> Self {
        let kubeconfig = ctx
            .plane()
            .write_kubeconfig(OPERATOR_USER, &OPERATOR_GROUPS)
            .unwrap();
        let port = dbps_e2e::ports::free_port().unwrap();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--namespace".into(),
            ctx.namespace.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let process = Process::spawn(
            &format!("operator-{identity}"),
            &dbps_e2e::operator::binary(),
            &args,
            ctx.plane().dir(),
            |cmd| {
                cmd.env("KUBECONFIG", &kubeconfig)
                    .env("POD_NAME", identity)
                    .env("POD_NAMESPACE", RELEASE_NAMESPACE)
                    .env("RUST_LOG", "info,kube=warn");
            },
        )
        .unwrap();
        Self { process, port }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let response = reqwest::get(url).await.ok()?;
        Some((
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ))
    }

    /// The value of an unlabelled or fully labelled metric line, e.g. `dbps_leader`.
    async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await?;
        text.lines()
            .find(|l| l.starts_with(&format!("{series} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Waits (up to 30 s) until `/readyz` answers 200.
    async fn wait_ready(&self) {
        for _ in 0..300 {
            if self
                .get("/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("/readyz never answered 200:\n{}", self.logs());
    }

    async fn wait_metric(&self, series: &str, want: f64) {
        for _ in 0..300 {
            if self.metric(series).await == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{series} never became {want}; now {:?}",
            self.metric(series).await
        );
    }

    fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }

    fn logs(&self) -> String {
        self.process.log()
    }
}

/// A shared PostgreSQL claim `name` on `server` (registered as `server`), Ready.
async fn claim_ready(ctx: &TestContext, server: &str, name: &str) {
    let yaml = format!(
        "apiVersion: dbps.io/v1alpha1\nkind: Service\nmetadata: {{ name: svc }}\nspec: {{}}\n---\napiVersion: dbps.io/v1alpha1\nkind: DatabaseClaim\nmetadata: {{ name: {name} }}\nspec: {{ serviceRef: {{ name: svc }}, engine: postgres, server: {{ name: {server} }} }}\n"
    );
    dbps_e2e::manifests::apply_yaml(&ctx.client, &ctx.namespace, &yaml)
        .await
        .unwrap();
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for(&claims, name, "claim Ready", phase_is(ClaimPhase::Ready))
        .await;
}

/// The value of `series` once it has not changed for 3 s.
async fn settled(operator: &OperatorProcess, series: &str) -> Option<f64> {
    let mut last = operator.metric(series).await;
    let mut since = std::time::Instant::now();
    while since.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = operator.metric(series).await;
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
    }
    last
}

/// A ConfigMap someone gives the ownership tables' labels under a name of
/// its own wakes no Service however often it changes (it is not the table
/// of any), while an edit of a Service's table is written back.
#[tokio::test]
async fn a_configmap_labelled_as_a_table_under_another_name_wakes_no_service() {
    let ctx = TestContext::new("chart-labelled").await.unwrap();
    installed(&ctx).await;
    let operator = OperatorProcess::start(&ctx, "solo", &[]);
    operator.wait_ready().await;
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let registered = format!("{}-pg", ctx.namespace);
    dbps_e2e::fixtures::register(&ctx, &registered, &server, json!({})).await;
    claim_ready(&ctx, &registered, "db").await;
    let series = "dbps_reconciles_total{controller=\"service\"}";
    let before = settled(&operator, series).await;
    assert!(before.is_some_and(|n| n > 0.0));

    let tables = ctx.api::<ConfigMap>();
    let labelled: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "not-a-table",
            "labels": { "app.kubernetes.io/managed-by": "dbps-operator", "app.kubernetes.io/component": "ownership" },
        },
        "data": { "filler": "x".repeat(100_000) },
    }))
    .unwrap();
    tables
        .create(&PostParams::default(), &labelled)
        .await
        .unwrap();
    for round in 0..10 {
        let change = json!({ "data": { "round": round.to_string() } });
        tables
            .patch(
                "not-a-table",
                &PatchParams::default(),
                &Patch::Merge(change),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(settled(&operator, series).await, before);

    // The Service's own table, edited, brings its Service back.
    let forged = json!({ "data": { "account.svc": "intruder" } });
    tables
        .patch(
            "dbps-bindings-svc",
            &PatchParams::default(),
            &Patch::Merge(forged),
        )
        .await
        .unwrap();
    ctx.wait_for(
        &tables,
        "dbps-bindings-svc",
        "table written back",
        |t: Option<&ConfigMap>| {
            t.and_then(|t| t.data.as_ref())
                .is_some_and(|d| d.get("account.svc").map(String::as_str) == Some("svc"))
        },
    )
    .await;
    assert!(settled(&operator, series).await > before);
}

#[tokio::test]
async fn the_operator_process_serves_health_and_metrics_logs_json_and_stops_on_sigterm() {
    let ctx = TestContext::new("chart-process").await.unwrap();
    installed(&ctx).await;
    let lease = format!("lease-{}", ctx.namespace);
    let mut operator =
        OperatorProcess::start(&ctx, "solo", &["--leader-election", "--lease-name", &lease]);
    operator.wait_ready().await;
    assert_eq!(operator.get("/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(operator.get("/readyz").await.map(|r| r.0), Some(200));
    operator.wait_metric("dbps_leader", 1.0).await;

    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let registered = format!("{}-pg", ctx.namespace);
    dbps_e2e::fixtures::register(&ctx, &registered, &server, json!({})).await;
    claim_ready(&ctx, &registered, "metered").await;
    operator
        .wait_metric("dbps_claims{phase=\"Ready\"}", 1.0)
        .await;
    // A Ready claim waits for nothing: neither a turn nor its fence is left.
    for on in ["server", "ownership_table"] {
        operator
            .wait_metric(&format!("dbps_claims_waiting{{on=\"{on}\"}}"), 0.0)
            .await;
    }
    let (_, text) = operator.get("/metrics").await.unwrap();
    for series in [
        "dbps_reconciles_total{controller=\"claim\"}",
        "dbps_reconcile_duration_seconds_bucket{",
        "dbps_claim_ready_seconds_count 1",
        "dbps_reconciles_total{controller=\"service\"}",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }

    // Graceful shutdown on SIGTERM: the process exits 0 and gives up its Lease.
    operator.signal(libc::SIGTERM);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = operator.process.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still running after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit {status}:\n{}", operator.logs());
    let logs = operator.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2);
    for line in &lines {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            parsed["level"].is_string() && parsed["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        logs.contains("shutting down") && logs.contains("stopped"),
        "{logs}"
    );
    assert!(
        !logs.contains("password"),
        "a log line mentions a password:\n{logs}"
    );
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(ctx.client.clone(), RELEASE_NAMESPACE);
    let held = leases
        .get(&lease)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity);
    assert!(
        held.as_ref().is_none_or(|h| h.is_empty()),
        "Lease still held by {held:?}"
    );
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over_when_it_dies() {
    let ctx = TestContext::new("chart-leader").await.unwrap();
    installed(&ctx).await;
    let lease = format!("lease-{}", ctx.namespace);
    let args = [
        "--leader-election",
        "--lease-name",
        &lease,
        "--lease-duration-seconds",
        "4",
    ];
    let first = OperatorProcess::start(&ctx, "replica-a", &args);
    first.wait_metric("dbps_leader", 1.0).await;
    let second = OperatorProcess::start(&ctx, "replica-b", &args);
    // The standby serves and is ready, but does not lead.
    second.wait_ready().await;
    assert_eq!(second.metric("dbps_leader").await, Some(0.0));

    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let registered = format!("{}-pg", ctx.namespace);
    dbps_e2e::fixtures::register(&ctx, &registered, &server, json!({})).await;
    claim_ready(&ctx, &registered, "first").await;
    assert!(
        first
            .metric("dbps_reconciles_total{controller=\"claim\"}")
            .await
            .is_some_and(|n| n > 0.0)
    );
    assert_eq!(
        second
            .metric("dbps_reconciles_total{controller=\"claim\"}")
            .await,
        None,
        "the standby reconciled"
    );

    // The leader dies without giving up its Lease: the standby takes over once it expires.
    first.signal(libc::SIGKILL);
    let killed = std::time::Instant::now();
    second.wait_metric("dbps_leader", 1.0).await;
    let handover = killed.elapsed();
    // The Lease (4 s) must expire first; the standby takes it at its next try.
    assert!(
        handover < Duration::from_secs(8),
        "handover took {handover:?}"
    );
    claim_ready(&ctx, &registered, "second").await;
    assert!(
        second
            .metric("dbps_reconciles_total{controller=\"claim\"}")
            .await
            .is_some_and(|n| n > 0.0)
    );
    eprintln!(
        "leader handover after SIGKILL: {:.1}s (lease 4s)",
        handover.as_secs_f64()
    );
}

#[tokio::test]
async fn a_leader_whose_controllers_end_unasked_returns_an_error_and_releases_its_lease() {
    use dbps_operator::leader::{LeaderError, LeaseSettings, run_while_leading};
    let ctx = TestContext::new("leader-ends").await.unwrap();
    let lease = LeaseSettings {
        namespace: ctx.namespace.clone(),
        name: "dbps-operator".into(),
        identity: "replica-a".into(),
        duration: Duration::from_secs(4),
    };
    // Work that panics, as a controller whose reconcile panicked would end.
    let ended = run_while_leading(
        ctx.client.clone(),
        lease,
        |_stop| async { panic!("a reconcile panicked") },
        |_| {},
        std::future::pending(),
    );
    let result = tokio::time::timeout(Duration::from_secs(30), ended)
        .await
        .expect("run_while_leading kept running with its controllers gone");
    match result {
        Err(LeaderError::Ended(why)) => assert!(why.contains("panicked"), "{why}"),
        other => panic!("expected Ended, got {other:?}"),
    }
    // The Lease is released on the way out, so a standby need not wait for it to expire.
    let leases = ctx.api::<k8s_openapi::api::coordination::v1::Lease>();
    let held = leases
        .get("dbps-operator")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity);
    assert_ne!(held.as_deref(), Some("replica-a"));
}

#[tokio::test]
async fn every_pod_template_is_admitted_under_pod_security_restricted() {
    let ctx = TestContext::new("chart-psa").await.unwrap();
    let (ok, out) = run(
        &ctx,
        "kubectl",
        &[
            "label",
            "namespace",
            &ctx.namespace,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    );
    assert!(ok, "{out}");
    let pods = ctx.api::<Pod>();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let admit = |name: String, template: k8s_openapi::api::core::v1::PodTemplateSpec| {
        let (pods, dry_run) = (pods.clone(), dry_run.clone());
        async move {
            let mut pod = Pod {
                metadata: template.metadata.unwrap_or_default(),
                spec: template.spec,
                ..Default::default()
            };
            pod.metadata.name = Some(name.clone());
            // The admission's ServiceAccount cache may lag a moment behind a new account.
            for _ in 0..100 {
                match pods.create(&dry_run, &pod).await {
                    Ok(_) => return,
                    Err(e)
                        if e.to_string().contains("serviceaccount")
                            && e.to_string().contains("not found") =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => panic!("{name} refused under restricted: {e}"),
                }
            }
            let last = pods.create(&dry_run, &pod).await.err();
            panic!("{name}: its ServiceAccount never became visible to admission: {last:?}");
        }
    };

    // The database instances the operator builds, per engine.
    let service: dbps_operator::api::Service = serde_json::from_value(json!({
        "apiVersion": "dbps.io/v1alpha1", "kind": "Service", "metadata": { "name": "svc", "namespace": ctx.namespace }, "spec": {}
    }))
    .unwrap();
    let credentials = dbps_operator::children::Credentials {
        admin_password: "a".into(),
        app_password: "b".into(),
        instance: dbps_operator::children::InstanceFiles {
            tls: Some(
                dbps_operator::children::tls::InstanceTls::issue("opensearch-db", "opensearch-db")
                    .unwrap(),
            ),
            files: vec![],
        },
    };
    for engine in ["postgres", "mongodb", "influxdb", "opensearch"] {
        let mut claim: DatabaseClaim = serde_json::from_value(json!({
            "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim",
            "metadata": { "name": format!("{engine}-db"), "namespace": ctx.namespace, "uid": "0000" },
            "spec": { "serviceRef": { "name": "svc" }, "engine": engine }
        }))
        .unwrap();
        claim.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
        let inputs = dbps_operator::children::Inputs {
            claim: &claim,
            service: &service,
            credentials: &credentials,
            platform: &dbps_operator::children::Platform::default(),
        };
        let sts = dbps_operator::children::statefulset(&inputs);
        let mut template = sts.spec.unwrap().template;
        // As the StatefulSet controller does: the claim template becomes a PVC volume.
        let data = serde_json::from_value(json!({ "name": "data", "persistentVolumeClaim": { "claimName": format!("data-{engine}-db-0") } }))
            .unwrap();
        template
            .spec
            .as_mut()
            .unwrap()
            .volumes
            .get_or_insert_with(Vec::new)
            .push(data);
        admit(format!("{engine}-instance"), template).await;
    }

    // The chart's Deployment.
    let (ok, rendered) = run(
        &ctx,
        "helm",
        &[
            "template",
            RELEASE,
            &chart(),
            "--namespace",
            &ctx.namespace,
            "--show-only",
            "templates/deployment.yaml",
            "--set",
            "serviceAccount.name=default",
        ],
    );
    assert!(ok, "{rendered}");
    let deployment: Deployment = serde_yaml::from_str(&rendered).unwrap();
    admit("operator".into(), deployment.spec.unwrap().template).await;
}
