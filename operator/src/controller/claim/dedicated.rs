//! Dedicated placement: a claim with no `spec.server` gets an instance of
//! its own. Dereference (its Service, its existing objects and credentials)
//! → build (pure) → apply (skipped when unchanged) → administer over the wire.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service as KubeService};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::super::apply as ssa;
use super::super::context::{Context, Error};
use super::super::drift;
use super::administer::{Target, administer};
use super::fences::{Fence, unfenced};
use super::status::{Outcome, update_status, update_status_with};
use crate::api::{ClaimPhase, DatabaseClaim, Endpoint, Reason};
use crate::children::tls::{self, InstanceTls};
use crate::children::{
    Credentials, Dedicated, Inputs, InstanceFiles, instance_service, names, secret_value,
};
use crate::engines::PASSWORD_KEY;
use crate::engines::{Connection, Tls};
use crate::password;

/// The major version of a version string (`17`, `8.0` → 8, `1.11` → 1).
pub fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// The version of the running instance, from its StatefulSet's image tag.
fn running_version(sts: &StatefulSet) -> Option<String> {
    let image = sts
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()?;
    image.rsplit_once(':').map(|(_, tag)| tag.to_string())
}

/// How soon a claim whose instance has no ready replica looks at its pod
/// again.
const INSTANCE_LOOK_AGAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The container waiting reasons that will not pass by themselves: the
/// image cannot be pulled, the container cannot be made, or it keeps exiting.
const STUCK: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];

/// Why an instance's pod does not start, in the words of the scheduler or
/// the kubelet: it cannot be scheduled (e.g. `0/3 nodes are available: 3
/// Insufficient memory.`), or a container is stuck (its image, its
/// configuration, or exits: with the last exit's reason and code). `None`
/// while it is on its way, and for a pod of that name that is not the
/// StatefulSet's (someone else's words are not quoted).
fn pod_trouble(pod: &Pod, sts: &StatefulSet) -> Option<String> {
    let owned = pod
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && sts.uid().is_some_and(|uid| o.uid == uid));
    if !owned {
        return None;
    }
    let status = pod.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(condition) = unschedulable {
        return Some(bounded(format!(
            "cannot be scheduled: {}",
            condition.message.as_deref().unwrap_or("no reason given")
        )));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in containers {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = waiting.reason.as_deref().filter(|r| STUCK.contains(r)) else {
            continue;
        };
        let mut why = format!("container {:?}: {reason}", container.name);
        if let Some(message) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
            why.push_str(&format!(": {message}"));
        }
        if let Some(exit) = container
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
        {
            why.push_str(&format!(
                " (last exit: {}, code {})",
                exit.reason.as_deref().unwrap_or("unknown"),
                exit.exit_code
            ));
        }
        return Some(bounded(why));
    }
    None
}

/// An instance made with another pod management policy keeps it: the field
/// cannot change (`OrderedReady`, the policy before `Parallel`, the
/// apiserver's default, does not replace a pod that never became ready).
fn keep_pod_management_policy(desired: &mut StatefulSet, live: Option<&StatefulSet>) {
    if let Some(live) = live.and_then(|s| s.spec.as_ref())
        && let Some(desired) = desired.spec.as_mut()
    {
        desired.pod_management_policy = Some(
            live.pod_management_policy
                .clone()
                .unwrap_or_else(|| "OrderedReady".into()),
        );
    }
}

/// At most 512 bytes of `text` (a status message stays readable).
fn bounded(mut text: String) -> String {
    const MOST: usize = 512;
    if text.len() > MOST {
        let mut cut = MOST;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// A claim of its own instance: the instance's children (superuser Secret,
/// NetworkPolicy, Service, StatefulSet), then its database and users over
/// the wire once a replica is ready.
pub(super) async fn apply(claim: &DatabaseClaim, ctx: &Context) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let resync = Action::requeue(ctx.config.resync);

    // dereference
    let service_name = &claim.spec.service_ref.name;
    let Some(service) = ctx.caches.service(&ns, service_name) else {
        let outcome = Outcome::waiting(
            ClaimPhase::Pending,
            Reason::ServiceNotFound,
            format!(
                "Service {service_name:?} (dbps.io) does not exist in namespace {ns:?}; create it or correct spec.serviceRef.name"
            ),
        );
        update_status(claim, ctx, outcome).await?;
        // The Service watch brings the claim back when the Service appears;
        // it also looks again soon, in case the cache lags.
        return Ok(super::look_again_soon(ctx));
    };
    let secrets: Api<Secret> = ctx.api(&ns);
    let statefulsets: Api<StatefulSet> = ctx.api(&ns);
    let name = claim.name_any();
    let read = async {
        let admin = secrets.get_opt(&names::admin_secret(&name)).await?;
        let instance = names::instance(&name);
        let live_sts = cached_or_get(
            &statefulsets,
            ctx.caches.statefulset(&ns, &instance),
            &instance,
        )
        .await?;
        // The volume and a binding Secret someone else made matter until
        // this claim's StatefulSet exists: nothing is made over them. Once it
        // does, the volume is its, and the binding is checked where it is
        // written (administer).
        let owns_sts = live_sts.as_ref().is_some_and(|s| {
            s.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == claim.metadata.uid.as_ref())
        });
        let (binding, volume) = match owns_sts {
            true => (None, None),
            false => (
                secrets.get_opt(&names::binding_secret(&name)).await?,
                ctx.api::<PersistentVolumeClaim>(&ns)
                    .get_opt(&names::data_pvc(&name))
                    .await?,
            ),
        };
        Ok::<_, kube::Error>((admin, binding, live_sts, volume))
    };
    let (admin, binding, live_sts, volume) = match read.await {
        Ok(found) => found,
        Err(e) => return Err(visible_failure(claim, ctx, e).await),
    };

    // Nothing of another Service, and nothing dbps did not make, is touched.
    let found = [
        admin.as_ref().map(|s| (&s.metadata, "Secret")),
        binding.as_ref().map(|s| (&s.metadata, "Secret")),
        live_sts.as_ref().map(|s| (&s.metadata, "StatefulSet")),
        volume
            .as_ref()
            .map(|v| (&v.metadata, "PersistentVolumeClaim")),
    ];
    let mut refusal = found
        .iter()
        .flatten()
        .find_map(|(meta, kind)| drift::foreign(meta, kind, claim, service_name))
        .map(|message| (Reason::ObjectOwnedByAnotherService, message));
    if refusal.is_none() && volume.is_some() && admin.is_none() {
        refusal = Some((
            Reason::VolumeWithoutCredentials,
            format!(
                "volume {:?} exists but Secret {:?}, which holds the credentials it was initialised with, does not; nothing was attached. Restore the Secret, or delete the volume to start afresh",
                names::data_pvc(&name),
                names::admin_secret(&name)
            ),
        ));
    }
    let version = claim
        .spec
        .version
        .clone()
        .unwrap_or_else(|| claim.spec.engine.instance().default_version().to_string());
    if let Some(running) = live_sts.as_ref().and_then(running_version)
        && refusal.is_none()
        && major(&running) != major(&version)
    {
        refusal = Some((
            Reason::MajorVersionChange,
            format!(
                "the instance runs {} {running}; {version} is another major version, which cannot run on its data. Set spec.version back to {running} (minor versions change in place), or move the data to a new claim",
                claim.spec.engine.as_str()
            ),
        ));
    }
    if let Some((reason, message)) = refusal {
        update_status(
            claim,
            ctx,
            Outcome::waiting(ClaimPhase::Failed, reason, message),
        )
        .await?;
        return Ok(resync);
    }

    // Its admin Secret and binding are written only once its Service's
    // ownership table names them: the admin Secret for the instance's own
    // pods, the binding for the Service's.
    let fences = [
        Fence {
            secret: names::admin_secret(&name),
            owner: format!("claim:{name}"),
        },
        Fence {
            secret: names::binding_secret(&name),
            owner: service_name.clone(),
        },
    ];
    if let Some(secret) = unfenced(ctx, claim, &ns, service_name, &fences) {
        return super::fences::wait(claim, service_name, &secret, ctx).await;
    }

    // The superuser's password: believed only when it matches what dbps issued.
    let uid = claim.uid().unwrap_or_default();
    let mut issued = claim
        .status
        .as_ref()
        .and_then(|s| s.credentials.clone())
        .unwrap_or_default();
    let admin_pw = admin.as_ref().and_then(|s| secret_value(s, PASSWORD_KEY));
    let superuser = drift::choose(
        &uid,
        issued.admin_fingerprint.as_deref(),
        &[admin_pw.as_deref()],
    );
    let Some(admin_password) = superuser.value().map(String::from) else {
        let outcome = Outcome::waiting(
            ClaimPhase::Failed,
            Reason::AdminSecretEdited,
            format!(
                "Secret {:?} no longer holds the superuser password dbps issued (edited or deleted by hand); dbps does not use another value, and the instance keeps the password it was initialised with. Restore the Secret from a backup",
                names::admin_secret(&name)
            ),
        );
        update_status(claim, ctx, outcome).await?;
        return Ok(resync);
    };
    let admin_fingerprint = password::fingerprint(&uid, &admin_password);
    issued.admin_fingerprint = Some(admin_fingerprint.clone());
    let mut credentials = Credentials {
        admin_password,
        ..Default::default()
    };

    // The instance's Service first: the certificate of an instance that
    // serves TLS names its cluster IP, where the operator connects.
    let service_inputs = Inputs {
        claim,
        service: &service,
        credentials: &credentials,
        platform: &ctx.config.platform,
    };
    let services: Api<KubeService> = ctx.api(&ns);
    let desired_service = instance_service(&service_inputs);
    let ensured = async {
        let instance = names::instance(&name);
        let current = cached_or_get(
            &services,
            ctx.caches.instance_service(&ns, &instance),
            &instance,
        )
        .await?;
        ssa::apply_recorded(&services, &desired_service, current, &ctx.own).await
    };
    let kube_service = match ensured.await {
        Ok(kube_service) => kube_service,
        Err(e) => return Err(visible_failure(claim, ctx, e).await),
    };
    let cluster_ip = kube_service
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None");
    credentials.instance = match instance_files(
        claim,
        ctx,
        admin.as_ref(),
        &credentials.admin_password,
        cluster_ip.as_deref(),
    )
    .await
    {
        Ok(files) => files,
        Err(message) => {
            let outcome = Outcome::waiting(ClaimPhase::Provisioning, Reason::ApplyFailed, message);
            update_status(claim, ctx, outcome).await?;
            return Ok(super::look_again_soon(ctx));
        }
    };
    let instance_tls = credentials.instance.tls.as_ref().map(|t| t.ca_pem.clone());

    // build
    let inputs = Inputs {
        claim,
        service: &service,
        credentials: &credentials,
        platform: &ctx.config.platform,
    };
    let mut children = Dedicated::build(&inputs);
    keep_pod_management_policy(&mut children.statefulset, live_sts.as_ref());

    // apply: the admin Secret first (the pod reads it), the workload last.
    let applied = async {
        ssa::apply(&secrets, &children.admin_secret, admin).await?;
        let policies: Api<NetworkPolicy> = ctx.api(&ns);
        let instance = names::instance(&name);
        let policy = cached_or_get(
            &policies,
            ctx.caches.network_policy(&ns, &instance),
            &instance,
        )
        .await?;
        ssa::apply_recorded(&policies, &children.network_policy, policy, &ctx.own).await?;
        ssa::apply_recorded(&statefulsets, &children.statefulset, live_sts, &ctx.own).await
    };
    let sts = match applied.await {
        Ok(applied) => applied,
        Err(e) => return Err(visible_failure(claim, ctx, e).await),
    };

    let engine = claim.spec.engine;
    let endpoint = Endpoint {
        host: inputs.host(),
        port: engine.instance().port().into(),
    };
    let ready = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        >= 1;
    let Some(cluster_ip) = cluster_ip.filter(|_| ready) else {
        // Why its pod is not ready, when the pod says: nothing about the pod
        // brings the claim back (its StatefulSet's status changes when the
        // pod is made or turns ready, not when it cannot be scheduled or its
        // container cannot start), so the claim looks again a while later.
        let pod = format!("{}-0", sts.name_any());
        let trouble = match ctx.api::<Pod>(&ns).get_opt(&pod).await {
            Ok(pod) => pod.as_ref().and_then(|pod| pod_trouble(pod, &sts)),
            Err(error) => {
                tracing::debug!(%error, pod = %pod, "reading an instance's pod");
                None
            }
        };
        let (reason, message) = match trouble {
            Some(why) => (Reason::InstanceNotStarting, format!("pod {pod:?}: {why}")),
            None => (
                Reason::Provisioning,
                format!(
                    "waiting for StatefulSet {:?} to have a ready replica",
                    sts.name_any()
                ),
            ),
        };
        let outcome = Outcome {
            phase: ClaimPhase::Provisioning,
            ready: false,
            reason,
            message,
            binding: None,
            endpoint: Some(endpoint),
            extensions: None,
            compliant: None,
            readers: None,
        };
        update_status_with(claim, ctx, outcome, Some(issued)).await?;
        return Ok(Action::requeue(INSTANCE_LOOK_AGAIN.min(ctx.config.resync)));
    };

    // administer: the app's users and database, as on a shared server.
    let database = claim.database_name();
    let target = Target {
        place: format!("instance {:?}", names::instance(&name)),
        conn: Connection {
            engine,
            host: cluster_ip,
            port: engine.instance().port(),
            username: engine.admin_username().to_string(),
            password: credentials.admin_password.clone(),
            tls: instance_tls.clone().map(|ca_pem| Tls {
                ca_pem: Some(ca_pem),
            }),
        },
        users: [
            engine.app_username(&database, 0),
            engine.app_username(&database, 1),
        ],
        database,
        adopt: false,
        shared: false,
        endpoint,
        tls: instance_tls.map(Some),
        admin_fingerprint: Some(admin_fingerprint),
        admin_secret: None,
        allowed_extensions: (
            "the operator's --postgres-extensions (Helm value postgresExtensions)".into(),
            ctx.config.platform.postgres_extensions.clone(),
        ),
        connections: crate::engines::DEFAULT_CONNECTIONS_PER_SERVER,
        ready_message: format!("{} {} is ready", engine.as_str(), inputs.version()),
    };
    administer(claim, &service, target, ctx).await
}

/// The object as the watch cache holds it (the operator's own children), or
/// as the apiserver has it when the cache does not: not made yet, or made
/// by someone else (without the operator's label), which must be seen.
async fn cached_or_get<K>(
    api: &Api<K>,
    cached: Option<K>,
    name: &str,
) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match cached {
        Some(found) => Ok(Some(found)),
        None => api.get_opt(name).await,
    }
}

/// What the instance reads from its admin Secret besides the password: the
/// certificate of an instance that serves TLS (kept while it names what the
/// instance is reached by, issued anew otherwise) and its files (see
/// [`crate::engines::InstanceFile`]: kept once made, or made at every pass).
async fn instance_files(
    claim: &DatabaseClaim,
    ctx: &Context,
    admin: Option<&Secret>,
    password: &str,
    cluster_ip: Option<&str>,
) -> Result<InstanceFiles, String> {
    let engine = claim.spec.engine;
    let instance = names::instance(&claim.name_any());
    let mut files = InstanceFiles::default();
    if engine.instance().tls_dir().is_some() {
        let wanted = tls::names(
            &instance,
            &claim.namespace().unwrap_or_default(),
            &ctx.config.platform.cluster_domain,
            cluster_ip,
        );
        let kept = admin
            .and_then(InstanceTls::from_secret)
            .filter(|t| t.names == wanted && t.sound());
        files.tls = Some(match kept {
            Some(kept) => kept,
            None => InstanceTls::issue(&instance, &wanted)
                .map_err(|e| format!("issuing the instance's certificate failed: {e}"))?,
        });
    }
    for file in engine.instance().files() {
        let kept = admin.and_then(|s| secret_value(s, file.key));
        let value = match kept {
            Some(kept) if !file.enforced => kept,
            _ => {
                let (make, password) = (file.make, password.to_string());
                tokio::task::spawn_blocking(move || make(&password))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("making {:?} failed: {e}", file.key))?
            }
        };
        files.files.push((file.key, value));
    }
    Ok(files)
}

/// Makes a failure to read or write the instance's objects visible where the
/// user looks (e.g. a missing permission), and returns it for the retry.
async fn visible_failure(claim: &DatabaseClaim, ctx: &Context, e: kube::Error) -> Error {
    let outcome = Outcome::waiting(
        ClaimPhase::Provisioning,
        Reason::ApplyFailed,
        format!("reading or writing the instance's objects failed: {e}"),
    );
    match update_status(claim, ctx, outcome).await {
        Ok(()) => e.into(),
        Err(status) => status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "orders-db-0", "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "orders-db",
                "uid": "sts-uid", "controller": true,
            }]},
            "status": status,
        }))
        .unwrap()
    }

    fn owner() -> StatefulSet {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": { "name": "orders-db", "uid": "sts-uid" },
        }))
        .unwrap()
    }

    #[test]
    fn an_instance_keeps_the_pod_management_policy_it_was_made_with() {
        let sts = |policy: Option<&str>| -> StatefulSet {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": { "name": "orders-db" },
                "spec": {
                    "podManagementPolicy": policy,
                    "selector": {}, "serviceName": "orders-db", "template": {},
                },
            }))
            .unwrap()
        };
        let policy = |s: &StatefulSet| s.spec.as_ref().unwrap().pod_management_policy.clone();
        let mut desired = sts(Some(crate::children::POD_MANAGEMENT_POLICY));
        keep_pod_management_policy(&mut desired, None);
        assert_eq!(
            policy(&desired).as_deref(),
            Some("Parallel"),
            "a new instance"
        );
        keep_pod_management_policy(&mut desired, Some(&sts(Some("Parallel"))));
        assert_eq!(policy(&desired).as_deref(), Some("Parallel"));
        keep_pod_management_policy(&mut desired, Some(&sts(Some("OrderedReady"))));
        assert_eq!(
            policy(&desired).as_deref(),
            Some("OrderedReady"),
            "made before"
        );
        let mut desired = sts(Some("Parallel"));
        keep_pod_management_policy(&mut desired, Some(&sts(None)));
        assert_eq!(
            policy(&desired).as_deref(),
            Some("OrderedReady"),
            "the default"
        );
    }

    #[test]
    fn a_pod_that_does_not_start_says_why_and_one_on_its_way_does_not() {
        let unschedulable = pod(serde_json::json!({ "phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient memory.",
        }]}));
        assert_eq!(
            pod_trouble(&unschedulable, &owner()).as_deref(),
            Some("cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory.")
        );
        let pulling = pod(
            serde_json::json!({ "phase": "Pending", "containerStatuses": [{
                "name": "postgres", "image": "postgres:17", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image \"postgres:17\"" } },
            }]}),
        );
        assert_eq!(
            pod_trouble(&pulling, &owner()).as_deref(),
            Some(
                "container \"postgres\": ImagePullBackOff: Back-off pulling image \"postgres:17\""
            )
        );
        let crashing = pod(
            serde_json::json!({ "phase": "Running", "containerStatuses": [{
                "name": "postgres", "image": "postgres:17", "imageID": "", "ready": false, "restartCount": 4,
                "state": { "waiting": { "reason": "CrashLoopBackOff" } },
                "lastState": { "terminated": { "reason": "OOMKilled", "exitCode": 137 } },
            }]}),
        );
        assert_eq!(
            pod_trouble(&crashing, &owner()).as_deref(),
            Some("container \"postgres\": CrashLoopBackOff (last exit: OOMKilled, code 137)")
        );
        // On its way: being scheduled, its image pulled, its container made.
        let creating = pod(serde_json::json!({ "phase": "Pending", "conditions": [
            { "type": "PodScheduled", "status": "True" },
        ], "containerStatuses": [{
            "name": "postgres", "image": "postgres:17", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": "ContainerCreating" } },
        }]}));
        assert_eq!(pod_trouble(&creating, &owner()), None);
        assert_eq!(
            pod_trouble(&pod(serde_json::json!({ "phase": "Pending" })), &owner()),
            None
        );
        // A long message is cut.
        let long = pod(serde_json::json!({ "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "é".repeat(600),
        }]}));
        let why = pod_trouble(&long, &owner()).unwrap();
        assert!(
            why.len() <= 512 + '…'.len_utf8() && why.ends_with('…'),
            "{}",
            why.len()
        );
        // A pod of that name the StatefulSet does not control: not quoted.
        let mut foreign = unschedulable.clone();
        foreign.metadata.owner_references = None;
        assert_eq!(pod_trouble(&foreign, &owner()), None);
        let mut other = owner();
        other.metadata.uid = Some("another-uid".into());
        assert_eq!(pod_trouble(&unschedulable, &other), None);
    }
}
