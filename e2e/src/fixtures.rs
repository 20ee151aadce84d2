//! What the suites make and wait for, once: a registered server, a Service,
//! a claim, a claim's events, a Secret's values.

use std::collections::BTreeMap;
use std::time::Duration;

use dbps_operator::api::{DatabaseClaim, DatabaseServer, Service};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use crate::TestContext;
use crate::claims::secret_values;
use crate::databases::LocalServer;
use crate::operator::TEST_LABEL;

/// Creates Service `name` (dbps.io) with `spec`.
pub async fn service(ctx: &TestContext, name: &str, spec: Value) -> Service {
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "dbps.io/v1alpha1", "kind": "Service",
        "metadata": { "name": name }, "spec": spec
    }))
    .unwrap();
    ctx.api::<Service>()
        .create(&PostParams::default(), &service)
        .await
        .unwrap()
}

/// Creates DatabaseClaim `name` with `spec`.
pub async fn claim(ctx: &TestContext, name: &str, spec: Value) -> DatabaseClaim {
    let claim: DatabaseClaim = serde_json::from_value(json!({
        "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim",
        "metadata": { "name": name }, "spec": spec
    }))
    .unwrap();
    ctx.api::<DatabaseClaim>()
        .create(&PostParams::default(), &claim)
        .await
        .unwrap()
}

/// Registers `server` as DatabaseServer `name` (labelled for this test's
/// operator), its admin Secret in the test's namespace; `extra` is merged
/// into the spec.
pub async fn register(ctx: &TestContext, name: &str, server: &LocalServer, extra: Value) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": format!("{name}-admin") },
        "stringData": { "username": server.admin_user, "password": server.admin_password }
    }))
    .unwrap();
    ctx.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mut spec = json!({
        "engine": server.kind.engine().as_str(),
        "host": server.host,
        "port": server.port,
        "adminSecretRef": { "namespace": ctx.namespace, "name": format!("{name}-admin") }
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    let object: DatabaseServer = serde_json::from_value(json!({
        "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseServer",
        "metadata": { "name": name, "labels": { TEST_LABEL: ctx.namespace } },
        "spec": spec
    }))
    .unwrap();
    Api::<DatabaseServer>::all(ctx.client.clone())
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

/// The values of Secret `name`, if it exists.
pub async fn secret(ctx: &TestContext, name: &str) -> Option<BTreeMap<String, String>> {
    ctx.api::<Secret>()
        .get_opt(name)
        .await
        .unwrap()
        .map(|s| secret_values(&s))
}

/// Events about object `name` in the test's namespace: (type, reason, note).
pub async fn events(ctx: &TestContext, name: &str) -> Vec<(String, String, String)> {
    ctx.api::<Event>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits (at most 90 s) for an event about `name` with `reason`; returns its
/// type and note.
pub async fn wait_event(ctx: &TestContext, name: &str, reason: &str) -> (String, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let found = events(ctx, name)
            .await
            .into_iter()
            .find(|(_, r, _)| r == reason);
        if let Some((type_, _, note)) = found {
            return (type_, note);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} event about {name}; events: {:?}",
            events(ctx, name).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
