//! Dedicated instances on the real control plane with kwok nodes: a claim
//! becomes its children and a Ready StatefulSet on a kwok node, whose pod
//! runs no database; the operator then reports that it cannot reach the
//! instance to administer it (`InstanceUnreachable`, a refused connection to
//! the Service's loopback address), with the binding Secret already issued.
//! Deletion keeps or removes the data as the claim says; the fence lets only
//! the owning service (and the operator) in; a quiet resync writes nothing.
//! The same claims reaching Ready on real database pods: real_node_dedicated.rs.

use std::time::Duration;

use dbps_operator::api::{ClaimPhase, DatabaseClaim, Service};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, Service as KubeService};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use dbps_e2e::claims::{phase_is, reason_is, secret_values as decoded};
use dbps_e2e::databases::{Kind, LocalServer};
use dbps_e2e::{RunningOperator, TestContext};

const QUIET_RESYNC: Duration = Duration::from_secs(2);

/// What a dedicated claim reaches on kwok: every object in place, the
/// instance (a pod running no database) not answering the operator.
const UNREACHABLE: &str = "InstanceUnreachable";

/// A test namespace that enforces Pod Security `restricted`, with the operator running.
async fn setup(test: &str) -> (TestContext, RunningOperator) {
    let (ctx, operator) = dbps_e2e::fixtures::with_operator(test, Duration::from_secs(300)).await;
    dbps_e2e::fixtures::enforce_restricted(&ctx.client, &ctx.namespace).await;
    (ctx, operator)
}

/// The dedicated PostgreSQL claim `orders-db` of the Service `orders`, as
/// far as it goes on kwok.
async fn orders_db(ctx: &TestContext) -> DatabaseClaim {
    dbps_e2e::fixtures::claim(
        ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres" }),
    )
    .await;
    ctx.wait_for(
        &ctx.api::<DatabaseClaim>(),
        "orders-db",
        "instance unreachable",
        reason_is(UNREACHABLE),
    )
    .await
}

fn owned_by(obj: &impl Resource, claim: &DatabaseClaim) -> bool {
    obj.owner_references()
        .iter()
        .any(|o| Some(&o.uid) == claim.metadata.uid.as_ref())
}

/// Everything a dedicated claim becomes, checked on the live objects.
async fn check_children(
    ctx: &TestContext,
    claim: &DatabaseClaim,
    engine: &str,
    binding_type: &str,
    port: u16,
) {
    let name = claim.name_any();
    let ns = &ctx.namespace;
    let binding = ctx
        .api::<Secret>()
        .get(&format!("{name}-binding"))
        .await
        .unwrap();
    assert_eq!(
        binding.type_.as_deref(),
        Some(format!("servicebinding.io/{binding_type}").as_str())
    );
    let values = decoded(&binding);
    let host = format!("{name}.{ns}.svc.cluster.local");
    assert_eq!(values["type"], binding_type);
    assert_eq!(values["provider"], "dbps");
    assert_eq!(values["host"], host);
    assert_eq!(values["port"], port.to_string());
    let database = name.replace('-', "_");
    assert_eq!(values["database"], database);
    assert_eq!(values["username"], format!("{database}_app"));
    assert_eq!(values["password"].len(), 32);
    assert!(
        values["uri"].contains(&format!("{host}:{port}")),
        "{}",
        values["uri"]
    );
    let admin = decoded(
        &ctx.api::<Secret>()
            .get(&format!("{name}-admin"))
            .await
            .unwrap(),
    );
    assert_ne!(
        admin["username"], values["username"],
        "the app user is not the superuser"
    );
    assert_ne!(admin["password"], values["password"]);
    assert!(owned_by(&binding, claim));
    for (key, value) in [
        ("dbps.io/service", "svc"),
        ("dbps.io/claim", name.as_str()),
        ("app.kubernetes.io/managed-by", "dbps-operator"),
        ("app.kubernetes.io/instance", name.as_str()),
    ] {
        assert_eq!(
            binding.labels().get(key).map(String::as_str),
            Some(value),
            "label {key}"
        );
    }

    // The Service's reader Role lists the binding once the claim is vetted.
    let binding_name = format!("{name}-binding");
    let role = ctx
        .wait_for(
            &ctx.api::<Role>(),
            "dbps-svc-binding-reader",
            "the Service's reader Role",
            |r: Option<&Role>| {
                r.and_then(|r| r.rules.as_ref()?.first()?.resource_names.as_ref())
                    .is_some_and(|n| n.contains(&binding_name))
            },
        )
        .await;
    // `get` on the Service's binding Secrets only: never an admin Secret.
    let mut rules = serde_json::to_value(&role.rules).unwrap();
    let names = rules[0]["resourceNames"].take();
    assert_eq!(
        rules,
        json!([{ "apiGroups": [""], "resources": ["secrets"], "resourceNames": null, "verbs": ["get"] }])
    );
    for secret in names.as_array().unwrap() {
        let secret = secret.as_str().unwrap();
        assert!(
            ["keep-db-binding", "drop-db-binding"].contains(&secret),
            "{secret}"
        );
    }
    let rb = ctx
        .api::<RoleBinding>()
        .get("dbps-svc-binding-reader")
        .await
        .unwrap();
    assert_eq!(rb.subjects.unwrap()[0].name, "svc-account");

    let policy = ctx.api::<NetworkPolicy>().get(&name).await.unwrap();
    let spec = serde_json::to_value(policy.spec.unwrap()).unwrap();
    assert_eq!(
        spec["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        json!({ "dbps.io/service": "svc" })
    );
    assert_eq!(spec["ingress"][0]["ports"][0]["port"], port);
    assert_eq!(
        spec["podSelector"]["matchLabels"]["dbps.io/claim"],
        name.as_str()
    );

    let service = ctx.api::<KubeService>().get(&name).await.unwrap();
    assert_eq!(
        service.spec.unwrap().ports.unwrap()[0].port,
        i32::from(port)
    );

    let sts = ctx.api::<StatefulSet>().get(&name).await.unwrap();
    assert!(owned_by(&sts, claim));
    let pod = sts.spec.unwrap().template;
    let container = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.name, engine);
    let pod_labels = pod.metadata.unwrap().labels.unwrap();
    assert!(
        !pod_labels.contains_key("dbps.io/service"),
        "database pods are not service pods"
    );
}

/// Per engine: two claims, one `Retain` and one `Delete`, through their whole life.
async fn lifecycle(engine: &str, binding_type: &str, port: u16) {
    let (ctx, _operator) = setup(&format!("life-{engine}")).await;
    dbps_e2e::fixtures::service(&ctx, "svc", json!({ "serviceAccountName": "svc-account" })).await;
    let claims = ctx.api::<DatabaseClaim>();
    let mut ready = Vec::new();
    for (name, policy) in [("keep-db", "Retain"), ("drop-db", "Delete")] {
        dbps_e2e::fixtures::claim(
            &ctx,
            name,
            json!({ "serviceRef": { "name": "svc" }, "engine": engine, "deletionPolicy": policy, "storage": { "size": "2Gi" } }),
        )
        .await;
    }
    for name in ["keep-db", "drop-db"] {
        let claim = ctx
            .wait_for(
                &claims,
                name,
                "instance unreachable",
                reason_is(UNREACHABLE),
            )
            .await;
        let status = claim.status.clone().unwrap();
        assert_eq!(status.phase, Some(ClaimPhase::Provisioning));
        assert_eq!(
            status.binding, None,
            "not Ready, so no binding is announced"
        );
        assert_eq!(status.endpoint.as_ref().unwrap().port, i32::from(port));
        assert_eq!(status.observed_generation, claim.metadata.generation);
        let cond = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(cond.status, "False");
        // The operator tried the instance's Service address, a loopback one here.
        assert!(
            cond.message.contains(&format!("instance \"{name}\""))
                && cond.message.contains("cannot reach"),
            "{}",
            cond.message
        );
        let sts = ctx.api::<StatefulSet>().get(name).await.unwrap();
        assert_eq!(sts.status.unwrap().ready_replicas, Some(1));
        let pvc = ctx
            .api::<PersistentVolumeClaim>()
            .get(&format!("data-{name}-0"))
            .await
            .unwrap();
        assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));
        check_children(&ctx, &claim, engine, binding_type, port).await;
        ready.push(claim);
    }

    // The Service lists both databases, not Ready.
    let services = ctx.api::<Service>();
    let service = ctx
        .wait_for(
            &services,
            "svc",
            "Service lists both databases",
            |s: Option<&Service>| {
                s.and_then(|s| s.status.as_ref()).is_some_and(|s| {
                    s.database_count == 2
                        && s.databases
                            .iter()
                            .all(|d| d.phase == Some(ClaimPhase::Provisioning))
                })
            },
        )
        .await;
    let status = service.status.unwrap();
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False")
    );

    // Retain: the volume and both Secrets outlive the claim, no longer owned by it.
    let keep = &ready[0];
    claims
        .delete("keep-db", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_gone(&claims, "keep-db", "claim gone").await;
    let sts_api = ctx.api::<StatefulSet>();
    ctx.wait_gone(&sts_api, "keep-db", "StatefulSet collected")
        .await;
    let pvc = ctx
        .api::<PersistentVolumeClaim>()
        .get_opt("data-keep-db-0")
        .await
        .unwrap();
    assert!(
        pvc.is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "Retain keeps the volume"
    );
    for secret in ["keep-db-admin", "keep-db-binding"] {
        let s = ctx.api::<Secret>().get(secret).await.unwrap();
        assert!(
            !owned_by(&s, keep),
            "{secret} still owned by the deleted claim"
        );
    }

    // Delete: everything goes.
    claims
        .delete("drop-db", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_gone(&claims, "drop-db", "claim gone").await;
    let pvcs = ctx.api::<PersistentVolumeClaim>();
    ctx.wait_gone(&pvcs, "data-drop-db-0", "volume deleted")
        .await;
    let secrets = ctx.api::<Secret>();
    for secret in ["drop-db-admin", "drop-db-binding"] {
        ctx.wait_gone(&secrets, secret, "Secret collected").await;
    }
    let policies = ctx.api::<NetworkPolicy>();
    ctx.wait_gone(&policies, "drop-db", "NetworkPolicy collected")
        .await;
}

#[tokio::test]
async fn postgres_claim_lifecycle() {
    lifecycle("postgres", "postgresql", 5432).await;
}

#[tokio::test]
async fn mongodb_claim_lifecycle() {
    lifecycle("mongodb", "mongodb", 27017).await;
}

#[tokio::test]
async fn influxdb_claim_lifecycle() {
    lifecycle("influxdb", "influxdb", 8086).await;
}

/// An instance whose pod cannot be scheduled says so, in the scheduler's
/// words, and holds up no other claim; put right, it goes on.
#[tokio::test]
async fn an_instance_that_cannot_be_scheduled_says_why_and_goes_on_once_put_right() {
    let (ctx, _operator) = setup("unschedulable").await;
    dbps_e2e::fixtures::service(&ctx, "svc", json!({})).await;
    let huge = json!({ "requests": { "memory": "100Ti" }, "limits": { "memory": "100Ti" } });
    dbps_e2e::fixtures::claim(
        &ctx,
        "huge-db",
        json!({ "serviceRef": { "name": "svc" }, "engine": "postgres", "resources": huge }),
    )
    .await;
    dbps_e2e::fixtures::claim(
        &ctx,
        "small-db",
        json!({ "serviceRef": { "name": "svc" }, "engine": "postgres" }),
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    // The scheduler's words as they are now (first, perhaps, that the
    // volume is not bound yet; then the memory).
    let claim = ctx
        .wait_for(
            &claims,
            "huge-db",
            "InstanceNotStarting: Insufficient memory",
            |c: Option<&DatabaseClaim>| {
                reason_is("InstanceNotStarting")(c)
                    && c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.message.contains("Insufficient memory"))
                    })
            },
        )
        .await;
    let status = claim.status.unwrap();
    assert_eq!(status.phase, Some(ClaimPhase::Provisioning));
    let message = &status.conditions[0].message;
    assert!(
        message.starts_with("pod \"huge-db-0\": cannot be scheduled: "),
        "{message}"
    );
    // The other claim of the same Service is not held up.
    ctx.wait_for(
        &claims,
        "small-db",
        "instance unreachable",
        reason_is(UNREACHABLE),
    )
    .await;

    // Put right: the instance is scheduled and goes on.
    claims
        .patch(
            "huge-db",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "resources": { "requests": { "memory": "256Mi" }, "limits": { "memory": "256Mi" } } } })),
        )
        .await
        .unwrap();
    ctx.wait_for(
        &claims,
        "huge-db",
        "instance unreachable",
        reason_is(UNREACHABLE),
    )
    .await;
}

#[tokio::test]
async fn claim_waits_for_its_service_then_is_provisioned() {
    let (ctx, _operator) = setup("no-service").await;
    dbps_e2e::fixtures::claim(
        &ctx,
        "early",
        json!({ "serviceRef": { "name": "late" }, "engine": "postgres" }),
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    let claim = ctx
        .wait_for(
            &claims,
            "early",
            "ServiceNotFound",
            reason_is("ServiceNotFound"),
        )
        .await;
    let status = claim.status.unwrap();
    assert_eq!(status.phase, Some(ClaimPhase::Pending));
    let cond = &status.conditions[0];
    assert_eq!(cond.status, "False");
    assert!(cond.message.contains("\"late\""), "{}", cond.message);
    assert!(
        ctx.api::<StatefulSet>()
            .get_opt("early")
            .await
            .unwrap()
            .is_none()
    );

    dbps_e2e::fixtures::service(&ctx, "late", json!({})).await;
    ctx.wait_for(
        &claims,
        "early",
        "instance unreachable",
        reason_is(UNREACHABLE),
    )
    .await;
}

#[tokio::test]
async fn binding_secret_is_readable_by_the_owning_service_account_only() {
    let (ctx, _operator) = setup("secret-rbac").await;
    dbps_e2e::fixtures::service(&ctx, "orders", json!({})).await;
    dbps_e2e::fixtures::service(&ctx, "payments", json!({})).await;
    orders_db(&ctx).await;

    let account = |sa: &str| format!("system:serviceaccount:{}:{sa}", ctx.namespace);
    let groups = ["system:serviceaccounts"];
    let orders = ctx
        .plane()
        .client_for(&account("orders"), &groups)
        .await
        .unwrap();
    let payments = ctx
        .plane()
        .client_for(&account("payments"), &groups)
        .await
        .unwrap();
    let as_orders: Api<Secret> = Api::namespaced(orders, &ctx.namespace);
    let as_payments: Api<Secret> = Api::namespaced(payments, &ctx.namespace);
    // RBAC follows the new RoleBinding within moments.
    let mut allowed = false;
    for _ in 0..50 {
        if as_orders.get("orders-db-binding").await.is_ok() {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(allowed, "orders cannot read its own binding");
    for (api, secret) in [
        (&as_orders, "orders-db-admin"),
        (&as_payments, "orders-db-binding"),
        (&as_payments, "orders-db-admin"),
    ] {
        let err = api.get(secret).await.expect_err("read allowed");
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 403),
            "{err}"
        );
    }
    let err = as_orders
        .list(&Default::default())
        .await
        .expect_err("list allowed");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
}

#[tokio::test]
async fn each_network_policy_admits_only_its_own_service_and_follows_its_selector() {
    let (ctx, _operator) = setup("fence").await;
    dbps_e2e::fixtures::service(&ctx, "orders", json!({})).await;
    dbps_e2e::fixtures::service(
        &ctx,
        "catalog",
        json!({ "selector": { "app": "catalog-api" } }),
    )
    .await;
    dbps_e2e::fixtures::claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres" }),
    )
    .await;
    dbps_e2e::fixtures::claim(
        &ctx,
        "catalog-db",
        json!({ "serviceRef": { "name": "catalog" }, "engine": "mongodb" }),
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    for name in ["orders-db", "catalog-db"] {
        ctx.wait_for(
            &claims,
            name,
            "instance unreachable",
            reason_is(UNREACHABLE),
        )
        .await;
    }
    let policies = ctx.api::<NetworkPolicy>();
    let from = |p: &NetworkPolicy| {
        let spec = serde_json::to_value(p.spec.as_ref().unwrap()).unwrap();
        (
            spec["podSelector"]["matchLabels"].clone(),
            spec["ingress"].clone(),
        )
    };
    let (target, ingress) = from(&policies.get("orders-db").await.unwrap());
    assert_eq!(target["dbps.io/claim"], "orders-db");
    assert_eq!(
        ingress,
        json!([{ "from": [{ "podSelector": { "matchLabels": { "dbps.io/service": "orders" } } }], "ports": [{ "port": 5432, "protocol": "TCP" }] }])
    );
    let (target, ingress) = from(&policies.get("catalog-db").await.unwrap());
    assert_eq!(target["dbps.io/claim"], "catalog-db");
    assert_eq!(
        ingress,
        json!([{ "from": [{ "podSelector": { "matchLabels": { "app": "catalog-api" } } }], "ports": [{ "port": 27017, "protocol": "TCP" }] }])
    );

    // Changing the Service's selector moves the fence.
    let patch = json!({ "spec": { "selector": { "app": "catalog-v2" } } });
    ctx.api::<Service>()
        .patch("catalog", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    ctx.wait_for(
        &policies,
        "catalog-db",
        "policy follows selector",
        |p: Option<&NetworkPolicy>| {
            p.and_then(|p| p.spec.as_ref())
                .and_then(|s| s.ingress.as_ref())
                .and_then(|i| i[0].from.as_ref())
                .and_then(|f| f[0].pod_selector.as_ref())
                .and_then(|s| s.match_labels.as_ref())
                .is_some_and(|l| l.get("app").map(String::as_str) == Some("catalog-v2"))
        },
    )
    .await;
    let (_, ingress) = from(&policies.get("orders-db").await.unwrap());
    assert_eq!(
        ingress[0]["from"][0]["podSelector"]["matchLabels"],
        json!({ "dbps.io/service": "orders" })
    );
}

/// A dedicated PostgreSQL serves TLS only, as its client authentication
/// file in its admin Secret says; that file is the operator's: one edited
/// by hand (to let logins in without TLS or password) is put back, and the
/// pod template that restarts the instance on a change of it stays as it
/// was. (Served and refused for real: cluster_dedicated.rs.)
#[tokio::test]
async fn an_edited_client_authentication_file_is_put_back() {
    let ctx = TestContext::new("hba").await.unwrap();
    let _operator = RunningOperator::start(&ctx, QUIET_RESYNC).await.unwrap();
    dbps_e2e::fixtures::service(&ctx, "orders", json!({})).await;
    orders_db(&ctx).await;
    let secrets = ctx.api::<Secret>();
    let admin = decoded(&secrets.get("orders-db-admin").await.unwrap());
    let binding = decoded(&secrets.get("orders-db-binding").await.unwrap());
    let made = admin["pg_hba.conf"].clone();
    assert!(made.contains("hostssl"), "{made}");
    assert!(
        !made.contains("trust") && !made.contains("\nhost "),
        "{made}"
    );
    // The binding verifies the instance under the instance's own CA.
    assert_eq!(binding["sslmode"], "verify-full");
    assert_eq!(binding["ca.crt"], admin["ca.crt"]);
    assert!(
        binding["uri"].ends_with("?sslmode=verify-full"),
        "{}",
        binding["uri"]
    );
    let statefulsets = ctx.api::<StatefulSet>();
    let template = |sts: &StatefulSet| {
        sts.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default()
    };
    let before = template(&statefulsets.get("orders-db").await.unwrap());
    assert!(before.contains_key("dbps.io/instance-files"), "{before:?}");
    assert!(before.contains_key("dbps.io/tls-certificate"), "{before:?}");

    secrets
        .patch(
            "orders-db-admin",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "pg_hba.conf": "host all all all trust\n" } })),
        )
        .await
        .unwrap();
    let wanted = made.clone();
    ctx.wait_for(
        &secrets,
        "orders-db-admin",
        "the client authentication file put back",
        move |s: Option<&Secret>| {
            s.and_then(|s| dbps_operator::children::secret_value(s, "pg_hba.conf"))
                .is_some_and(|v| v == wanted)
        },
    )
    .await;
    let after = template(&statefulsets.get("orders-db").await.unwrap());
    assert_eq!(after, before, "the instance is not restarted for nothing");
    let admin_after = decoded(&secrets.get("orders-db-admin").await.unwrap());
    assert_eq!(admin_after["password"], admin["password"]);
    assert_eq!(admin_after["tls.crt"], admin["tls.crt"]);
}

#[tokio::test]
async fn a_resync_with_nothing_changed_writes_nothing() {
    let ctx = TestContext::new("quiet").await.unwrap();
    let operator = RunningOperator::start(&ctx, QUIET_RESYNC).await.unwrap();
    dbps_e2e::fixtures::service(&ctx, "svc", json!({})).await;
    // A Ready claim on a real server, beside dedicated claims waiting for
    // instances that never answer on kwok (retried with backoff).
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    dbps_e2e::fixtures::register(&ctx, "local-pg", &server, json!({})).await;
    dbps_e2e::fixtures::claim(
        &ctx,
        "shared",
        json!({ "serviceRef": { "name": "svc" }, "engine": "postgres", "server": { "name": "local-pg" } }),
    )
    .await;
    for (name, engine) in [
        ("pg", "postgres"),
        ("mongo", "mongodb"),
        ("influx", "influxdb"),
    ] {
        dbps_e2e::fixtures::claim(
            &ctx,
            name,
            json!({ "serviceRef": { "name": "svc" }, "engine": engine }),
        )
        .await;
    }
    let claims = ctx.api::<DatabaseClaim>();
    for name in ["pg", "mongo", "influx"] {
        ctx.wait_for(
            &claims,
            name,
            "instance unreachable",
            reason_is(UNREACHABLE),
        )
        .await;
    }
    ctx.wait_for(
        &claims,
        "shared",
        "claim Ready",
        phase_is(ClaimPhase::Ready),
    )
    .await;
    let services = ctx.api::<Service>();
    ctx.wait_for(
        &services,
        "svc",
        "Service lists 4 databases",
        |s: Option<&Service>| {
            s.and_then(|s| s.status.as_ref()).is_some_and(|s| {
                s.database_count == 4
                    && s.databases
                        .iter()
                        .filter(|d| d.phase == Some(ClaimPhase::Ready))
                        .count()
                        == 1
            })
        },
    )
    .await;
    // The events of the transitions are their last writes.
    let events: Api<k8s_openapi::api::events::v1::Event> = ctx.api();
    for _ in 0..100 {
        let list = events.list(&Default::default()).await.unwrap();
        let count = |reason: &str| {
            list.items
                .iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .count()
        };
        if count("Ready") == 1 && count(UNREACHABLE) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let offset = ctx.plane().audit_offset();
    let window = Duration::from_secs(8); // four resync periods
    tokio::time::sleep(window).await;
    let mine: Vec<_> = ctx
        .plane()
        .audit_events_since(offset)
        .into_iter()
        .filter(|e| e["user"]["username"] == operator.user.as_str())
        .collect();
    let writes: Vec<String> = mine
        .iter()
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete" | "deletecollection")
            )
        })
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect();
    // Each pass reads a Secret (the shared claim's binding, an instance's
    // admin Secret); the instances' children come from the watch caches.
    let reads = mine.iter().filter(|e| e["verb"] == "get").count();
    assert!(reads >= 4, "the resyncs did not run: {reads} reads");
    let children: Vec<_> = mine
        .iter()
        .filter(|e| e["verb"] == "get")
        .filter_map(|e| e["objectRef"]["resource"].as_str())
        .filter(|r| *r != "secrets")
        .collect();
    assert!(children.is_empty(), "read besides Secrets: {children:?}");
    assert!(writes.is_empty(), "steady state wrote: {writes:#?}");
    operator.stop().await;
}

#[tokio::test]
async fn the_readme_examples_are_accepted_and_provisioned() {
    let (ctx, _operator) = setup("examples").await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut claims = Vec::new();
    for file in [
        "orders-postgres.yaml",
        "catalog-mongodb.yaml",
        "telemetry-influxdb.yaml",
    ] {
        let yaml = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let applied = dbps_e2e::manifests::apply_yaml(&ctx.client, &ctx.namespace, &yaml)
            .await
            .unwrap();
        claims.extend(
            applied
                .into_iter()
                .filter_map(|a| a.strip_prefix("DatabaseClaim/").map(String::from)),
        );
    }
    assert_eq!(claims, ["orders-db", "catalog-db", "readings"]);
    let api = ctx.api::<DatabaseClaim>();
    for name in &claims {
        ctx.wait_for(
            &api,
            name,
            "example claim administered",
            reason_is(UNREACHABLE),
        )
        .await;
    }
}
