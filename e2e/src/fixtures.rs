//! What the suites make and wait for, once: a registered server, a Service,
//! a claim, a claim's events, a Secret's values, the ownership tables.

use std::collections::BTreeMap;
use std::time::Duration;

use dbps_operator::api::{DatabaseClaim, DatabaseServer, Service};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use crate::TestContext;
use crate::claims::secret_values;
use crate::databases::{Kind, LocalServer};
use crate::operator::TEST_LABEL;

/// A test's namespace and its operator, which re-checks every object each
/// `resync`.
pub async fn with_operator(
    test: &str,
    resync: Duration,
) -> (TestContext, crate::operator::RunningOperator) {
    let ctx = TestContext::new(test).await.unwrap();
    let operator = crate::operator::RunningOperator::start(&ctx, resync)
        .await
        .unwrap();
    (ctx, operator)
}

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
    // OpenSearch serves TLS only: it is registered with its CA.
    if let (Kind::OpenSearch, Some(ca)) = (server.kind, &server.ca_pem) {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": format!("{name}-ca") }, "stringData": { "ca.crt": ca }
        }))
        .unwrap();
        ctx.api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        spec["tls"] = json!({ "enabled": true, "caSecretRef": { "namespace": ctx.namespace, "name": format!("{name}-ca") } });
    }
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

/// The value of `key` in the ownership tables of `namespace` (every
/// ConfigMap the admission policy reads there), if one has it. The tables
/// agree: a key with two values fails the test.
pub async fn table_entry(client: &kube::Client, namespace: &str, key: &str) -> Option<String> {
    let tables: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let listed = tables
        .list(&ListParams::default().labels(dbps_operator::controller::TABLE_SELECTOR))
        .await
        .unwrap();
    let mut values: Vec<(String, String)> = listed
        .items
        .into_iter()
        .filter_map(|t| {
            let name = t.metadata.name.clone().unwrap_or_default();
            t.data?.get(key).map(|v| (name, v.clone()))
        })
        .collect();
    values.sort_by(|a, b| a.1.cmp(&b.1));
    values.dedup_by(|a, b| a.1 == b.1);
    assert!(values.len() <= 1, "{key} has several owners: {values:?}");
    values.pop().map(|(_, v)| v)
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

/// A pod of `service` (its label and ServiceAccount) with one container
/// `container` (name, image, what it runs, env, mounts), run once as `uid`
/// under Pod Security `restricted`, with `volumes`.
fn service_pod(name: &str, service: &str, uid: i64, mut container: Value, volumes: Value) -> Pod {
    let defaults = json!({
        "name": "client", "imagePullPolicy": "Never",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } }
    });
    for (key, value) in defaults.as_object().expect("object") {
        container[key] = value.clone();
    }
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "dbps.io/service": service } },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": service,
            "automountServiceAccountToken": false,
            "securityContext": { "runAsNonRoot": true, "runAsUser": uid, "seccompProfile": { "type": "RuntimeDefault" } },
            "volumes": volumes,
            "containers": [container]
        }
    }))
    .unwrap()
}

/// A pod of `service` (its label and ServiceAccount) that runs `command`
/// once from `image` as `uid` under Pod Security `restricted`, with `env`.
/// As a service would, the commands retry for a while: the policy enforcer
/// learns a new pod's address a moment after it starts.
fn client_pod(
    name: &str,
    service: &str,
    image: &str,
    uid: i64,
    command: String,
    env: Value,
    attempts: u32,
) -> Pod {
    let container = json!({
        "image": image,
        "command": ["sh", "-c", format!("i=0; while [ $i -lt {attempts} ]; do {command} && exit 0; i=$((i + 1)); sleep 1; done; exit 1")],
        "env": env
    });
    service_pod(name, service, uid, container, json!([]))
}

/// `DB_USER`, `password_var` and `DB_NAME` from the binding Secret `binding`
/// (by secretKeyRef, as a service takes them), or guessed when `binding` is
/// empty (what is left to a pod the admission policy keeps off the binding).
fn binding_env(binding: &str, password_var: &str) -> Value {
    let value = |var: &str, key: &str| match binding {
        "" => json!({ "name": var, "value": "guess" }),
        _ => {
            json!({ "name": var, "valueFrom": { "secretKeyRef": { "name": binding, "key": key } } })
        }
    };
    json!([
        value("DB_USER", "username"),
        value(password_var, "password"),
        value("DB_NAME", "database")
    ])
}

/// A pod of `service` that runs `sql` with psql (from `image`) against
/// `host`, with the credentials of the binding Secret `binding` (empty:
/// guessed ones), over TLS as the binding says (its `sslmode`, verified
/// with its `ca.crt`).
pub fn psql_pod(
    image: &str,
    name: &str,
    service: &str,
    binding: &str,
    host: &str,
    sql: &str,
) -> Pod {
    psql_pod_sslmode(image, name, service, binding, host, sql, None)
}

/// [`psql_pod`] with the `sslmode` given (`disable`: in clear text) in
/// place of the binding's.
pub fn psql_pod_sslmode(
    image: &str,
    name: &str,
    service: &str,
    binding: &str,
    host: &str,
    sql: &str,
    sslmode: Option<&str>,
) -> Pod {
    let tls = match sslmode {
        Some(mode) => format!("export PGSSLMODE={mode}; "),
        None if binding.is_empty() => String::new(),
        None => "if [ -r /binding/sslmode ]; then read -r PGSSLMODE < /binding/sslmode || true; \
                 export PGSSLMODE PGSSLROOTCERT=/binding/ca.crt; fi; "
            .into(),
    };
    let command = format!(
        "PGCONNECT_TIMEOUT=3 psql -v ON_ERROR_STOP=1 -tA -h {host} -U \"$DB_USER\" -d \"$DB_NAME\" -c \"{sql}\""
    );
    let mut pod = client_pod(
        name,
        service,
        image,
        999,
        format!("{tls}{command}"),
        binding_env(binding, "PGPASSWORD"),
        10,
    );
    if !binding.is_empty() {
        let spec = pod.spec.as_mut().expect("spec");
        spec.volumes = Some(vec![
            serde_json::from_value(
                json!({ "name": "binding", "secret": { "secretName": binding } }),
            )
            .unwrap(),
        ]);
        spec.containers[0].volume_mounts = Some(vec![
            serde_json::from_value(
                json!({ "name": "binding", "mountPath": "/binding", "readOnly": true }),
            )
            .unwrap(),
        ]);
    }
    pod
}

/// A pod of `service` that runs the `influx` client (from `image`) against
/// `host` with the credentials of the binding Secret `binding` (empty:
/// guessed ones).
pub fn influx_pod(
    image: &str,
    name: &str,
    service: &str,
    binding: &str,
    host: &str,
    query: &str,
) -> Pod {
    let command = format!(
        "HOME=/tmp influx -host {host} -username \"$DB_USER\" -password \"$DB_PASSWORD\" -database \"$DB_NAME\" -execute '{query}'"
    );
    client_pod(
        name,
        service,
        image,
        1000,
        command,
        binding_env(binding, "DB_PASSWORD"),
        10,
    )
}

/// A pod of `service` that runs the sample service `sample` once with
/// `--check` (a session as its user, its schema written; it tries a few
/// times) from the samples image `image` — its own entrypoint, no shell —
/// with the Secret `binding` projected where the servicebinding.io
/// convention puts it.
pub fn sample_check_pod(
    name: &str,
    service: &str,
    image: &str,
    sample: &str,
    binding: &str,
) -> Pod {
    let container = json!({
        "image": image,
        "args": [sample, "--check", "--check-attempts", "4", "--binding", format!("{sample}-db")],
        "env": [{ "name": "SERVICE_BINDING_ROOT", "value": "/bindings" }],
        "volumeMounts": [{ "name": "binding", "mountPath": format!("/bindings/{sample}-db"), "readOnly": true }]
    });
    let volumes = json!([{ "name": "binding", "secret": { "secretName": binding } }]);
    service_pod(name, service, 65532, container, volumes)
}

/// Asks for a rotation of claim `name`'s credentials: the annotation
/// `dbps.io/rotate` set to `value` (a new value is a new request).
pub async fn request_rotation(ctx: &TestContext, name: &str, value: &str) {
    ctx.api::<DatabaseClaim>()
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({ "metadata": { "annotations": { "dbps.io/rotate": value } } }),
            ),
        )
        .await
        .unwrap();
}

/// Copies the values of Secret `from` into a new Secret `to` that dbps knows
/// nothing of: credentials someone took out of a binding.
pub async fn copy_secret(ctx: &TestContext, from: &str, to: &str) {
    let values = secret(ctx, from).await.expect("secret to copy");
    let copy: Secret = serde_json::from_value(json!({
        "metadata": { "name": to },
        "stringData": values
    }))
    .unwrap();
    ctx.api::<Secret>()
        .create(&PostParams::default(), &copy)
        .await
        .unwrap();
}

/// A pod of no service that runs `script` once with `sh` from `image`
/// under Pod Security `restricted`.
pub fn script_pod(name: &str, image: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": { "runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "script", "image": image, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } }
            }]
        }
    }))
    .unwrap()
}

/// Makes namespace `namespace` enforce Pod Security `restricted`.
pub async fn enforce_restricted(client: &kube::Client, namespace: &str) {
    let label =
        json!({ "metadata": { "labels": { "pod-security.kubernetes.io/enforce": "restricted" } } });
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            namespace,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(label),
        )
        .await
        .unwrap();
}

/// Creates ServiceAccount `name` (the identity of a service's pods).
pub async fn service_account(ctx: &TestContext, name: &str) {
    let account: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
    ctx.api::<k8s_openapi::api::core::v1::ServiceAccount>()
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
}

/// Runs `pod` to completion; its output (or error) and whether it succeeded.
pub async fn run_pod(ctx: &TestContext, pod: Pod) -> (bool, String) {
    let name = pod.metadata.name.clone().unwrap();
    ctx.api::<Pod>()
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    wait_pod(ctx, &name, Duration::from_secs(90)).await
}

/// Waits (at most `timeout`) until pod `name` has finished; its output (or
/// error) and whether it succeeded.
pub async fn wait_pod(ctx: &TestContext, name: &str, timeout: Duration) -> (bool, String) {
    let pods = ctx.api::<Pod>();
    let finished = kube::runtime::wait::await_condition(pods.clone(), name, |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.phase.clone())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
    });
    let done = match tokio::time::timeout(timeout, finished).await {
        Ok(Ok(Some(pod))) => pod,
        Ok(Ok(None)) => panic!("pod {name} is gone"),
        Ok(Err(e)) => panic!("watch of pod {name} failed: {e}"),
        Err(_) => {
            let now = pods.get_opt(name).await.ok().flatten();
            panic!("pod {name} did not finish in {timeout:?}; it is now: {now:#?}")
        }
    };
    let status = done.status.unwrap();
    let said = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.state?.terminated?.message)
        .collect::<Vec<_>>()
        .join("");
    (status.phase.as_deref() == Some("Succeeded"), said)
}
