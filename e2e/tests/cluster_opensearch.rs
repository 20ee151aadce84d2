//! A dedicated OpenSearch claim on a cluster with real pods (the real node
//! here, kind with `make e2e-kind`): the chart's operator issues the
//! instance a certificate from a CA of its own and the admin's hash for its
//! first boot, the instance runs under Pod Security `restricted` and serves
//! TLS only, and the search sample's pod creates its index over
//! `verify-full` TLS with the binding. Another Service of the same
//! namespace is refused at admission when its pod references the binding or
//! the admin Secret (which holds the instance's private key), and by the
//! NetworkPolicy when it holds a copy of the credentials. A certificate
//! someone edits in the admin Secret is replaced: the instance restarts
//! with a new one and the binding carries the new CA. A rotation hands out
//! the other user.

use std::time::{Duration, Instant};

use dbps_e2e::claims::reason_is;
use dbps_e2e::cluster::Cluster;
use dbps_e2e::fixtures::{claim, copy_secret, run_pod as run, sample_check_pod, service};
use dbps_operator::api::DatabaseClaim;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Whether `said` (a client's output) tells of a connection the network
/// refused or dropped, not of a password or a certificate that said no.
fn refused_by_the_network(said: &str) -> bool {
    ["Connection refused", "timed out", "timeout", "No route"]
        .iter()
        .any(|s| said.contains(s))
}

#[tokio::test]
async fn a_dedicated_opensearch_serves_its_service_over_tls_and_nobody_else() {
    let cluster = Cluster::start("cluster-opensearch").await.unwrap();
    cluster.import_opensearch().unwrap();
    cluster.install_operator().await.unwrap();
    let ctx = &cluster.ctx;
    let images = &cluster.images;
    for name in ["search", "intruder"] {
        dbps_e2e::fixtures::service_account(ctx, name).await;
        service(ctx, name, json!({})).await;
    }

    let claimed = Instant::now();
    claim(
        ctx,
        "search-db",
        cluster.dedicated(
            "search",
            "opensearch",
            json!({ "deletionPolicy": "Delete" }),
        ),
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for_within(
        &claims,
        "search-db",
        "OpenSearch claim Ready",
        Duration::from_secs(300),
        reason_is("Ready"),
    )
    .await;
    eprintln!("OpenSearch claim Ready after {:?}", claimed.elapsed());

    // The binding: TLS to the instance's name, under the instance's own CA.
    let binding = dbps_e2e::fixtures::secret(ctx, "search-db-binding")
        .await
        .unwrap();
    let host = format!("search-db.{}.svc.cluster.local", ctx.namespace);
    assert_eq!(binding["type"], "opensearch");
    assert_eq!(binding["host"], host);
    assert!(binding["uri"].starts_with("https://"), "{}", binding["uri"]);
    assert!(binding["prefix"].ends_with('-'), "{}", binding["prefix"]);
    let admin = dbps_e2e::fixtures::secret(ctx, "search-db-admin")
        .await
        .unwrap();
    assert_eq!(binding["ca.crt"], admin["ca.crt"]);
    assert!(
        !binding.contains_key("tls.key"),
        "the instance's key stays in its admin Secret"
    );
    let check = |name: &str, service: &str, secret: &str| {
        sample_check_pod(name, service, &images.samples, "search", secret)
    };

    // The owning service creates its index over verify-full TLS.
    let (ok, said) = run(ctx, check("search-check", "search", "search-db-binding")).await;
    assert!(ok, "the search service cannot use its OpenSearch: {said}");
    eprintln!("first OpenSearch index after {:?}", claimed.elapsed());

    // Another service: refused at admission for the binding and for the
    // admin Secret with the instance's key ...
    let pods = ctx.api::<Pod>();
    for (pod, secret, owner) in [
        ("intruder-binding", "search-db-binding", "service search"),
        (
            "intruder-admin",
            "search-db-admin",
            "the database instance of claim search-db",
        ),
    ] {
        let refused = pods
            .create(&PostParams::default(), &check(pod, "intruder", secret))
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains(&format!("owned by {owner}")),
            "{refused}"
        );
    }
    // ... and with the credentials copied elsewhere, no packet gets through.
    copy_secret(ctx, "search-db-binding", "stolen-search").await;
    let (ok, said) = run(ctx, check("intruder-stolen", "intruder", "stolen-search")).await;
    assert!(!ok, "another service reached OpenSearch: {said}");
    assert!(refused_by_the_network(&said), "{said}");

    // A certificate edited in the admin Secret is not served: the operator
    // issues a new one, the instance restarts with it, the binding carries
    // the new CA and the service works with it.
    let statefulsets = ctx.api::<StatefulSet>();
    let digest = |sts: &StatefulSet| {
        sts.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("dbps.io/tls-certificate").cloned())
    };
    let before = digest(&statefulsets.get("search-db").await.unwrap());
    assert!(before.is_some());
    ctx.api::<Secret>()
        .patch(
            "search-db-admin",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "tls.crt": "edited by hand" } })),
        )
        .await
        .unwrap();
    let renewed = ctx
        .wait_for_within(
            &statefulsets,
            "search-db",
            "a new certificate in the pod template",
            Duration::from_secs(90),
            move |s: Option<&StatefulSet>| s.is_some_and(|s| digest(s) != before),
        )
        .await;
    // The instance restarts with it: its pod carries the new digest and is Ready.
    let renewed = digest(&renewed);
    ctx.wait_for_within(
        &ctx.api::<Pod>(),
        "search-db-0",
        "the instance restarted with the new certificate",
        Duration::from_secs(300),
        move |p: Option<&Pod>| {
            p.is_some_and(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("dbps.io/tls-certificate"))
                    == renewed.as_ref()
                    && p.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
            })
        },
    )
    .await;
    let old_ca = binding["ca.crt"].clone();
    let secrets = ctx.api::<Secret>();
    ctx.wait_for_within(
        &secrets,
        "search-db-binding",
        "the binding with the new CA",
        Duration::from_secs(300),
        move |s: Option<&Secret>| {
            s.and_then(|s| dbps_operator::children::secret_value(s, "ca.crt"))
                .is_some_and(|ca| ca != old_ca)
        },
    )
    .await;
    ctx.wait_for_within(
        &claims,
        "search-db",
        "claim Ready with the new certificate",
        Duration::from_secs(300),
        reason_is("Ready"),
    )
    .await;
    let (ok, said) = run(ctx, check("search-check-2", "search", "search-db-binding")).await;
    assert!(ok, "the search service lost its OpenSearch: {said}");
    // The copy made before holds the old CA: it no longer vouches for the
    // instance (and the network still refuses the intruder anyway).
    let admin = dbps_e2e::fixtures::secret(ctx, "search-db-admin")
        .await
        .unwrap();
    assert_ne!(admin["tls.crt"], "edited by hand");

    // A rotation on the instance: the other user, in a new Secret, creates
    // its index; the first user is revoked after the grace period.
    dbps_e2e::fixtures::request_rotation(ctx, "search-db", "1").await;
    let rotated = ctx
        .wait_for_within(
            &claims,
            "search-db",
            "rotated",
            Duration::from_secs(90),
            |c: Option<&DatabaseClaim>| {
                c.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.binding.as_ref())
                    .is_some_and(|b| b.name == "search-db-binding-1")
            },
        )
        .await;
    assert!(
        rotated
            .status
            .unwrap()
            .credentials
            .unwrap()
            .previous
            .is_some()
    );
    let issued = dbps_e2e::fixtures::secret(ctx, "search-db-binding-1")
        .await
        .unwrap();
    assert_ne!(issued["username"], binding["username"]);
    let (ok, said) = run(
        ctx,
        check("search-rotated", "search", "search-db-binding-1"),
    )
    .await;
    assert!(ok, "the rotated credentials do not work: {said}");

    // Deleting the claim (Delete) takes the instance and its Secrets.
    claims
        .delete("search-db", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_gone(&claims, "search-db", "claim deleted").await;
    // The admin Secret goes with its owner (the garbage collector), the
    // bindings with the cleanup.
    for secret in [
        "search-db-admin",
        "search-db-binding",
        "search-db-binding-1",
    ] {
        ctx.wait_gone(&secrets, secret, &format!("{secret} deleted"))
            .await;
    }
    ctx.wait_gone(&pods, "search-db-0", "instance pod gone")
        .await;

    cluster.finish().await;
}
