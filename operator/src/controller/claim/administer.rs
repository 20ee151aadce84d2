//! What a claim gets on the server that holds its database, whoever runs
//! that server: a database and users carrying the claim's ownership mark,
//! credentials in a binding Secret only the owning Service reads, rotation
//! with a grace period, and repair of edited or deleted Secrets. Shared
//! placement reaches a registered `DatabaseServer`; dedicated placement the
//! claim's own instance, as its superuser.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::super::apply::apply;
use super::super::context::{Context, Error};
use super::super::drift;
use super::fences::{Fence, checked, unfenced};
use super::rotation::{self, DEFAULT_GRACE_SECONDS, ROTATE_ANNOTATION};
use super::status::{Outcome, publish, update_status, update_status_full, update_status_with};
use crate::api::{
    Binding, ClaimPhase, CredentialsStatus, DatabaseClaim, Endpoint as StatusEndpoint, Reason,
    Service,
};
use crate::children::{
    Credentials, Endpoint, Inputs, binding_secret_generation, names, secret_value,
};
use crate::engines::PASSWORD_KEY;
use crate::engines::{AdminError, Claimant, Connection, Grant, Mark, ownership};
use crate::password;

/// The ownership mark of `claim`'s objects on a server.
pub async fn mark_of(ctx: &Context, claim: &DatabaseClaim) -> Result<Mark, Error> {
    Ok(Mark {
        cluster: ctx.cluster_id().await?,
        namespace: claim.namespace().unwrap_or_default(),
        claim: claim.name_any(),
        uid: claim.uid().unwrap_or_default(),
        service: claim.spec.service_ref.name.clone(),
    })
}

/// The server a claim's database lives on, and how its service reaches it.
pub(super) struct Target {
    /// The server in messages: `DatabaseServer "pg"`, `instance "orders-db"`.
    pub place: String,
    /// How the operator reaches the server as its administrator.
    pub conn: Connection,
    /// The claim's database on that server.
    pub database: String,
    /// The platform team lets the claim take over an unmarked database of that name.
    pub adopt: bool,
    /// The server holds other claims' databases (shared placement): nothing
    /// is written until it shows the names are this claim's to take.
    pub shared: bool,
    /// The app's two users, which alternate with each rotation.
    pub users: [String; 2],
    /// Where the service connects.
    pub endpoint: StatusEndpoint,
    /// TLS the service uses, with the CA when not a public one.
    pub tls: Option<Option<String>>,
    /// Fingerprint of a dedicated instance's superuser password, for the status.
    pub admin_fingerprint: Option<String>,
    /// What the Ready message says first.
    pub ready_message: String,
    /// Connections the server takes at once.
    pub connections: usize,
    /// Where the platform's allow-list of extensions is, and what it names.
    pub allowed_extensions: (String, Vec<String>),
    /// The server's admin Secret (shared placement), which a compliance
    /// profile keeps out of the claim's namespace's reach.
    pub admin_secret: Option<crate::api::SecretRef>,
}

impl Target {
    fn username(&self, generation: i64) -> String {
        self.users[(generation % 2) as usize].clone()
    }
}

/// Issues, repairs and rotates the claim's credentials on `target` and
/// reports the outcome in the claim's status.
pub(super) async fn administer(
    claim: &DatabaseClaim,
    service: &Service,
    target: Target,
    ctx: &Context,
) -> Result<Action, Error> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let resync = Action::requeue(ctx.config.resync);
    // Only extensions the platform allows: nothing is changed for a claim
    // that names another.
    let (allow_list, allowed) = &target.allowed_extensions;
    // Those the claim's compliance profile needs come with it.
    let required = super::profile::required_extensions(claim.spec.profile);
    let refused: Vec<&str> = claim
        .spec
        .extensions
        .iter()
        .map(|e| e.name.as_str())
        .filter(|e| !allowed.iter().any(|a| a == e) && !required.contains(e))
        .collect();
    let mut wanted = claim.spec.extensions.clone();
    for name in required {
        if !wanted.iter().any(|e| e.name == *name) {
            wanted.push(crate::api::Extension {
                name: name.to_string(),
                schema: None,
            });
        }
    }
    if !refused.is_empty() {
        let message = format!(
            "extension {} is not in {allow_list}; nothing was changed. Remove it from spec.extensions, or ask the platform team to allow it",
            refused.join(", ")
        );
        let mut outcome =
            Outcome::waiting(ClaimPhase::Failed, Reason::ExtensionNotAllowed, message);
        outcome.endpoint = claim.status.as_ref().and_then(|s| s.endpoint.clone());
        outcome.binding = claim.status.as_ref().and_then(|s| s.binding.clone());
        update_status(claim, ctx, outcome).await?;
        return Ok(resync);
    }
    // Its binding is written only once its Service's ownership table names
    // it. A claim not accepted yet is first checked for a Secret of that
    // name that is not its own (which is never put behind its Service).
    let stable = names::binding_secret(&name);
    let service_name = service.name_any();
    let fence = [Fence {
        secret: stable.clone(),
        owner: service_name.clone(),
    }];
    if let Some(secret) = unfenced(ctx, claim, &ns, &service_name, &fence) {
        if !checked(claim, ctx) {
            let current = ctx.api::<Secret>(&ns).get_opt(&stable).await?;
            if refused_as_foreign(claim, service, current.as_ref(), ctx).await? {
                return Ok(resync);
            }
        }
        return super::fences::wait(claim, &service_name, &secret, ctx).await;
    }
    // A busy server takes the claim when a turn ends (it is woken then);
    // until then it holds nothing.
    // A turn holds the claim's requests to the apiserver too (its binding,
    // its status): four claims per connection keep the server's sessions
    // busy while some of them wait on the apiserver (development.md,
    // Benchmarks).
    let line = super::turns::line_of(claim);
    let capacity = 4 * target.connections;
    let Some(_turn) = ctx
        .turns
        .take(&target.conn.host, target.conn.port, capacity, line)
    else {
        // One whose status says nothing yet says so once it is old enough.
        if let Some(left) = super::fences::untold(claim) {
            return Ok(Action::requeue(left));
        }
        if claim.status.as_ref().and_then(|s| s.phase).is_none() {
            let message = format!(
                "waiting for a turn at {}, which sets up {capacity} claims at a time",
                target.place
            );
            let outcome = Outcome::waiting(ClaimPhase::Provisioning, Reason::Provisioning, message);
            update_status(claim, ctx, outcome).await?;
        }
        return Ok(resync);
    };
    ctx.servers
        .set_connections(&target.conn, target.connections);
    let mut steps = Steps::new();
    let secrets: Api<Secret> = ctx.api(&ns);
    let place = target.place.clone();
    let conn = &target.conn;
    let database = target.database.clone();
    // What the server said goes into the status (with the credentials the
    // Secrets now hold, when given): a conflict (another owner) waits for the
    // resync, a fault is retried with backoff.
    let server_failure =
        async |e: AdminError, issued: Option<CredentialsStatus>| -> Result<Action, Error> {
            let reason = match (&e, target.shared) {
                (AdminError::Unreachable(_) | AdminError::Timeout, false) => {
                    Reason::InstanceUnreachable
                }
                _ => e.reason(),
            };
            ctx.forget_failed(&target.conn, &e);
            if let Some(server) = claim.spec.server.as_ref().filter(|_| target.shared) {
                ctx.server_failed(&server.name, &target.conn, &e);
            }
            let phase = match e {
                AdminError::Conflict(_) | AdminError::Extension(_) => ClaimPhase::Failed,
                _ => ClaimPhase::Provisioning,
            };
            let mut outcome = Outcome::waiting(phase, reason, format!("{place}: {e}"));
            outcome.endpoint = Some(target.endpoint.clone());
            update_status_with(claim, ctx, outcome, issued).await?;
            match e {
                AdminError::Conflict(_) | AdminError::Extension(_) => Ok(resync.clone()),
                e => Err(Error::Unavailable(reason, e.to_string())),
            }
        };
    let claimant = Claimant {
        mark: mark_of(ctx, claim).await?,
        adopt: target.adopt,
    };
    let mark = &claimant.mark;
    let uid = &mark.uid;

    // A claim not placed yet on a shared server writes nothing, not even its
    // binding Secret, until the server shows that the names it would use are
    // its to take.
    let placed = claim.status.as_ref().and_then(|s| s.database.as_ref()) == Some(&database);
    if target.shared && !placed {
        let users = [target.username(0)];
        let authorized = match ctx.servers.inspect(conn, &database, &users).await {
            Ok(found) => ownership::authorize(&found, &claimant).map_err(AdminError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = authorized {
            return server_failure(e, None).await;
        }
        steps.done("inspect");
    }

    // A compliance profile is checked on the server every time; a claim not
    // placed yet gets nothing until it is met, a placed one keeps working
    // and is told.
    let subject = super::profile::Subject {
        conn,
        place: &place,
        database: &database,
        username: &target.users[0],
        admin_secret: target.admin_secret.as_ref(),
    };
    let compliant = match super::profile::check(claim, service, subject, ctx).await {
        Ok(verdict) => verdict,
        Err(super::profile::CheckError::Server(e)) => return server_failure(e, None).await,
        Err(super::profile::CheckError::Kube(e)) => return Err(e),
    };
    if let Some(verdict) = compliant.as_ref().filter(|v| !v.satisfied) {
        if !placed {
            let mut outcome =
                Outcome::waiting(ClaimPhase::Failed, verdict.reason, verdict.message.clone());
            outcome.compliant = Some(verdict.clone());
            update_status(claim, ctx, outcome).await?;
            return Ok(resync);
        }
        let told = claim.status.as_ref().and_then(|s| {
            crate::api::find_condition(&s.conditions, super::profile::COMPLIANT)
                .filter(|c| c.status == "False" && c.reason == verdict.reason.as_str())
        });
        if told.is_none() {
            let note = format!(
                "{}; the database keeps working, but no longer meets its profile",
                verdict.message
            );
            publish(
                ctx,
                claim,
                EventType::Warning,
                verdict.reason,
                "Check",
                note,
            )
            .await;
        }
    }

    let now = Timestamp::now();
    let trigger = claim.annotations().get(ROTATE_ANNOTATION).cloned();
    let mut creds = rotation::recorded(
        claim.status.as_ref().and_then(|s| s.credentials.clone()),
        trigger.as_deref(),
        now,
    );
    if target.admin_fingerprint.is_some() {
        creds.admin_fingerprint = target.admin_fingerprint.clone();
    }
    let settings = claim.spec.rotation.clone().unwrap_or_default();
    let mut plan = rotation::plan(&creds, trigger.as_deref(), &settings, now);
    if plan.rotate {
        // A rotation is planned from the cached claim, which may not show
        // one this operator carried out a moment ago: the live status
        // decides, so a rotation is never carried out twice.
        let live = ctx
            .api::<DatabaseClaim>(&ns)
            .get_opt(&name)
            .await?
            .and_then(|c| c.status?.credentials);
        let cached = claim.status.as_ref().and_then(|s| s.credentials.as_ref());
        if let Some(live) = live.filter(|l| Some(l) != cached) {
            creds = rotation::recorded(Some(live), trigger.as_deref(), now);
            if target.admin_fingerprint.is_some() {
                creds.admin_fingerprint = target.admin_fingerprint.clone();
            }
            plan = rotation::plan(&creds, trigger.as_deref(), &settings, now);
        }
    }

    // 1. Credentials past their grace period are revoked, then their Secret goes.
    if let Some(previous) = &plan.revoke {
        if let Err(e) = ctx
            .servers
            .revoke(conn, &database, &previous.username, mark)
            .await
        {
            return server_failure(e, None).await;
        }
        // The stable binding (`<claim>-binding`) holds the credentials in
        // force since the rotation: it stays.
        if previous.secret != names::binding_secret(&name) {
            delete_if_present(&secrets, &previous.secret).await?;
        }
        creds.previous = None;
    }

    // 2. A rotation issues the other user in a new generation.
    let (rotate, generation) = (plan.rotate, plan.generation);

    // 3. The binding Secret of the generation in force is written before its
    //    user exists, so a password the server knows is always one a Secret
    //    holds. A Secret edited or deleted by hand is not believed: its
    //    credentials are issued anew.
    let secret_name = names::binding_secret_of(&name, generation);
    let fence = [Fence {
        secret: secret_name.clone(),
        owner: service_name.clone(),
    }];
    if let Some(secret) = unfenced(ctx, claim, &ns, &service_name, &fence) {
        return super::fences::wait(claim, &service_name, &secret, ctx).await;
    }
    let mut current = secrets.get_opt(&secret_name).await?;
    if refused_as_foreign(claim, service, current.as_ref(), ctx).await? {
        return Ok(resync);
    }
    let found = current.as_ref().and_then(|s| secret_value(s, PASSWORD_KEY));
    let recorded = match rotate {
        true => None,
        false => creds.fingerprint.clone(),
    };
    let mut choice = drift::choose(uid, recorded.as_deref(), &[found.as_deref()]);
    if choice == drift::Choice::Lost {
        // The cached claim may not show the fingerprint of the credentials
        // this operator wrote a moment ago: the live one decides.
        let live = ctx
            .api::<crate::api::DatabaseClaim>(&ns)
            .get_opt(&name)
            .await?
            .and_then(|c| c.status?.credentials?.fingerprint);
        if live.is_some() && live != recorded && !rotate {
            choice = drift::choose(uid, live.as_deref(), &[found.as_deref()]);
            creds.fingerprint = live;
        }
    }
    let kept = matches!(choice, drift::Choice::Keep(_));
    let mut notice = None;
    let app_password = match choice {
        drift::Choice::Lost => {
            notice = Some(match &current {
                Some(_) => (
                    Reason::BindingSecretEdited,
                    format!(
                        "Secret {secret_name:?} was edited by hand; dbps issued new credentials in it and did not use the edited password"
                    ),
                ),
                None => (
                    Reason::BindingSecretDeleted,
                    format!(
                        "Secret {secret_name:?} was deleted; dbps wrote it again with new credentials"
                    ),
                ),
            });
            if current.as_ref().is_some_and(|s| s.immutable == Some(true)) {
                // An immutable Secret cannot be written over: it is replaced.
                delete_if_present(&secrets, &secret_name).await?;
                current = None;
            }
            password::generate()
        }
        choice => choice.value().unwrap_or_default().to_string(),
    };
    let credentials = Credentials {
        admin_password: String::new(),
        app_password,
        ..Default::default()
    };
    let inputs = Inputs {
        claim,
        service,
        credentials: &credentials,
        platform: &ctx.config.platform,
    };
    let endpoint = Endpoint {
        host: target.endpoint.host.clone(),
        port: target.endpoint.port as u16,
        database: database.clone(),
        username: target.username(generation),
        tls: target.tls.clone(),
    };
    let binding = apply(
        &secrets,
        &binding_secret_generation(&inputs, &endpoint, generation),
        current,
    )
    .await?;
    steps.done("binding");
    let stable_name = names::binding_secret(&name);
    // Who may read these Secrets through the API is the Service's Role (its
    // controller keeps it from its claims' statuses). A per-claim Role of an
    // earlier release goes.
    let legacy = names::legacy_binding_reader(&name);
    if ctx.caches.role(&ns, &legacy).is_some() {
        delete_if_present(&ctx.api::<Role>(&ns), &legacy).await?;
    }
    if ctx.caches.role_binding(&ns, &legacy).is_some() {
        delete_if_present(&ctx.api::<RoleBinding>(&ns), &legacy).await?;
    }
    let grant = Grant {
        database: database.clone(),
        username: endpoint.username.clone(),
        password: credentials.app_password.clone(),
    };
    let reissued = notice.is_some();
    // A claim Ready with nothing changed since (its spec, its Secret, no
    // rotation or revocation due) is verified with one login as its user;
    // only a refused login does the database setup again.
    let settled = kept
        && !rotate
        && plan.revoke.is_none()
        && claim.status.as_ref().is_some_and(|s| {
            s.phase == Some(ClaimPhase::Ready)
                && s.observed_generation == claim.metadata.generation
                && s.database.as_deref() == Some(database.as_str())
        });
    let (ensured, set_up) = if settled && ctx.servers.can_login(conn, &grant).await {
        (Ok(crate::engines::Provisioned::default()), false)
    } else {
        (ctx.servers.ensure(conn, &grant, &claimant).await, true)
    };
    steps.done(if set_up { "set up" } else { "login" });
    // The repair is told once the server has the new password (or failed to take it).
    if let Some((reason, note)) = notice {
        publish(ctx, claim, EventType::Warning, reason, "Repair", note).await;
    }
    // The extensions, when the setup was done again (a change of the spec
    // does it) and the claim names or had any.
    let had_extensions = claim
        .status
        .as_ref()
        .is_some_and(|s| !s.extensions.is_empty());
    let ensured = match ensured {
        Ok(provisioned) if set_up => {
            let mut extensions = None;
            let mut done = Ok(());
            if !wanted.is_empty() || had_extensions {
                match ctx.servers.extensions(conn, &database, &wanted, mark).await {
                    Ok(e) => extensions = Some(e),
                    Err(e) => done = Err(e),
                }
            }
            if done.is_ok() && claim.spec.profile.is_some() {
                done = ctx.servers.audit(conn, &database).await;
            }
            done.map(|()| (provisioned, extensions))
        }
        other => other.map(|provisioned| (provisioned, None)),
    };
    let (provisioned, extensions) = match ensured {
        Ok(done) => done,
        Err(e) => {
            // What the Secret now holds is recorded whatever the server says,
            // so a retry does not take dbps's own Secret for an edit.
            let issued = (!rotate).then(|| CredentialsStatus {
                fingerprint: Some(password::fingerprint(uid, &credentials.app_password)),
                ..creds.clone()
            });
            return server_failure(e, issued).await;
        }
    };
    // After a rotation the stable binding gets the credentials in force too,
    // once the server takes them: pods that mount it see the new files when
    // the kubelet refreshes them, within the grace period in which the
    // previous credentials still work, and need no restart. A hand edit of
    // it is written over with what is in force.
    if generation > 0 {
        let stable = secrets.get_opt(&stable_name).await?;
        if refused_as_foreign(claim, service, stable.as_ref(), ctx).await? {
            return Ok(resync);
        }
        let held = stable.as_ref().and_then(|s| secret_value(s, PASSWORD_KEY));
        // Told when the stable binding itself was edited or deleted, not when
        // it follows a rotation or a re-issue of the Secret in force.
        if !rotate && !reissued && held.as_deref() != Some(credentials.app_password.as_str()) {
            let note = match &stable {
                Some(_) => format!(
                    "Secret {stable_name:?} was edited by hand; dbps wrote the credentials in force back"
                ),
                None => format!(
                    "Secret {stable_name:?} was deleted; dbps wrote it again with the credentials in force"
                ),
            };
            let reason = match stable {
                Some(_) => Reason::BindingSecretEdited,
                None => Reason::BindingSecretDeleted,
            };
            // An action of its own: events of one reason and action are one
            // series, whose note would stay the first repair's.
            publish(ctx, claim, EventType::Warning, reason, "Restore", note).await;
        }
        apply(
            &secrets,
            &binding_secret_generation(&inputs, &endpoint, 0),
            stable,
        )
        .await?;
    }
    if let Some(done) = &extensions {
        if !done.created.is_empty() || !done.dropped.is_empty() {
            let mut told = Vec::new();
            if !done.created.is_empty() {
                told.push(format!("created extension {}", done.created.join(", ")));
            }
            if !done.dropped.is_empty() {
                told.push(format!("dropped extension {}", done.dropped.join(", ")));
            }
            let note = format!("{} in database {database:?} on {place}", told.join("; "));
            publish(
                ctx,
                claim,
                EventType::Normal,
                Reason::Ready,
                "Extensions",
                note,
            )
            .await;
        }
        if !done.in_use.is_empty() {
            let note = format!(
                "extension {} is no longer in spec.extensions but objects of database {database:?} use it: kept. Drop those objects and it goes at the next change of the claim",
                done.in_use.join(", ")
            );
            publish(
                ctx,
                claim,
                EventType::Warning,
                Reason::ExtensionInUse,
                "Extensions",
                note,
            )
            .await;
        }
    }
    let readers = match grant_readers(claim, &target, &claimant, &inputs, set_up, ctx).await {
        Ok(readers) => readers,
        Err(Failure::Server(e)) => return server_failure(e, None).await,
        Err(Failure::Kube(e)) => return Err(e),
    };
    if !provisioned.adopted.is_empty() {
        let note = format!(
            "adopted {} on {place}, as its DatabaseServer's spec.adoptions allows",
            provisioned.adopted.join(", ")
        );
        publish(
            ctx,
            claim,
            EventType::Normal,
            Reason::Adopted,
            "Adopt",
            note,
        )
        .await;
    }
    if rotate {
        let grace = settings
            .grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        let note = format!(
            "issued Secret {secret_name:?} and wrote its credentials into {stable_name:?}; the previous credentials stop working in {grace}s"
        );
        publish(
            ctx,
            claim,
            EventType::Normal,
            Reason::Rotated,
            "Rotate",
            note,
        )
        .await;
    }
    let (previous_secret, previous_user) = (
        names::binding_secret_of(&name, creds.generation),
        target.username(creds.generation),
    );
    creds = rotation::carried_out(
        creds,
        &plan,
        trigger.as_deref(),
        &settings,
        previous_secret,
        previous_user,
        now,
    );
    creds.fingerprint = Some(password::fingerprint(uid, &credentials.app_password));

    let mut message = format!(
        "{}; credentials in Secret {:?}",
        target.ready_message,
        binding.name_any()
    );
    if ctx
        .servers
        .cached_info(conn)
        .await
        .is_ok_and(|i| !i.enforces_database_roles)
    {
        message.push_str("; this server does not enforce per-database roles, so its other users are not kept out by it");
    }
    let outcome = Outcome {
        phase: ClaimPhase::Ready,
        ready: true,
        reason: Reason::Ready,
        message,
        binding: Some(Binding {
            name: binding.name_any(),
        }),
        endpoint: Some(target.endpoint.clone()),
        extensions: extensions.map(|done| {
            let mut listed = done.installed;
            // Those kept because they are in use are still there.
            listed.extend(claim.status.iter().flat_map(|s| {
                s.extensions
                    .iter()
                    .filter(|e| done.in_use.contains(&e.name))
                    .cloned()
            }));
            listed
        }),
        compliant,
        readers: Some(readers),
    };
    // Wake up for the end of a grace period or the next scheduled rotation,
    // and soon while a grant waits for its tables to be made.
    let mut next = rotation::next_wake(&creds, &settings, now, ctx.config.resync);
    let waiting = outcome
        .readers
        .iter()
        .flatten()
        .any(|r| !r.waiting.is_empty());
    if waiting {
        next = next.min(READERS_WAITING_RECHECK);
    }
    update_status_full(claim, ctx, outcome, Some(creds), Some(database)).await?;
    steps.done("status");
    tracing::debug!(claim = %format!("{ns}/{name}"), steps = %steps, "administered");
    Ok(Action::requeue(next))
}

/// How long each step of a turn took, for the debug log.
struct Steps {
    at: std::time::Instant,
    taken: Vec<(&'static str, std::time::Duration)>,
}

impl Steps {
    fn new() -> Self {
        Self {
            at: std::time::Instant::now(),
            taken: Vec::new(),
        }
    }

    /// Ends step `name`, begun when the previous one ended.
    fn done(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.taken.push((name, now - self.at));
        self.at = now;
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, took)) in self.taken.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {} ms", took.as_millis())?;
        }
        Ok(())
    }
}

/// How soon a grant waiting for tables not made yet looks again.
const READERS_WAITING_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the read-only grants could not be made.
enum Failure {
    Server(AdminError),
    Kube(Error),
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        Failure::Kube(e.into())
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Kube(e)
    }
}

/// The read-only users of the Services the claim names as readers, each
/// with a binding Secret labelled for its Service; those no longer named
/// are dropped with their Secrets. A grant found as recorded (its Secret's
/// password, its tables, nothing waiting) is not redone unless `set_up`.
async fn grant_readers(
    claim: &DatabaseClaim,
    target: &Target,
    claimant: &Claimant,
    inputs: &Inputs<'_>,
    set_up: bool,
    ctx: &Context,
) -> Result<Vec<crate::api::ReaderStatus>, Failure> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let uid = &claimant.mark.uid;
    let recorded: Vec<crate::api::ReaderStatus> = claim
        .status
        .as_ref()
        .map(|s| s.readers.clone())
        .unwrap_or_default();
    let mut granted = Vec::new();
    for reader in &claim.spec.readers {
        // A Service that does not exist yet has no place in the ownership
        // table to fence its Secret: nothing is issued for it until it does.
        let reader_ns = reader.namespace_or(&ns).to_string();
        if ctx.caches.service(&reader_ns, &reader.service).is_none() {
            continue;
        }
        let secrets: Api<Secret> = ctx.api(&reader_ns);
        let secret_name = names::reader_secret(&ns, &name, &reader_ns, &reader.service);
        // Nor until the reader's ownership table names it for the reader;
        // the claim is woken when that table names it.
        let fence = [Fence {
            secret: secret_name.clone(),
            owner: reader.service.clone(),
        }];
        if unfenced(ctx, claim, &reader_ns, &reader.service, &fence).is_some() {
            continue;
        }
        let current = secrets.get_opt(&secret_name).await?;
        // A Secret of the grant's name that dbps did not make for it is
        // left alone and the grant is not issued; the claim itself (its own
        // binding, fenced for its Service) is not held up by it.
        if let Some(message) = current
            .as_ref()
            .and_then(|s| crate::children::foreign_reader_secret(s, inputs, &reader.service))
        {
            let note = format!(
                "{message}; the read grant to Service {reader_ns}/{} is not issued",
                reader.service
            );
            publish(
                ctx,
                claim,
                EventType::Warning,
                Reason::ObjectOwnedByAnotherService,
                "Grant",
                note,
            )
            .await;
            continue;
        }
        let before = recorded
            .iter()
            .find(|r| r.service == reader.service && r.namespace == reader_ns);
        let found = current.as_ref().and_then(|s| secret_value(s, PASSWORD_KEY));
        let believed = found.as_ref().filter(|p| {
            before.and_then(|b| b.fingerprint.as_deref())
                == Some(password::fingerprint(uid, p).as_str())
        });
        let mut tables = reader.tables.clone();
        tables.sort();
        if let (false, Some(before), Some(_)) = (set_up, before, believed) {
            let mut had: Vec<String> = before
                .tables
                .iter()
                .chain(&before.waiting)
                .cloned()
                .collect();
            had.sort();
            if had == tables && before.waiting.is_empty() {
                granted.push(before.clone());
                continue;
            }
        }
        let password = believed.cloned().unwrap_or_else(password::generate);
        let username = reader_username(&target.database, &ns, &reader_ns, &reader.service);
        let endpoint = Endpoint {
            host: target.endpoint.host.clone(),
            port: target.endpoint.port as u16,
            database: target.database.clone(),
            username: username.clone(),
            tls: target.tls.clone(),
        };
        let credentials = Credentials {
            admin_password: String::new(),
            app_password: password.clone(),
            ..Default::default()
        };
        let reader_inputs = Inputs {
            credentials: &credentials,
            ..*inputs
        };
        apply(
            &secrets,
            &crate::children::reader_secret(&reader_inputs, &endpoint, &reader_ns, &reader.service),
            current,
        )
        .await?;
        let grant = crate::engines::ReadGrant {
            database: target.database.clone(),
            username: username.clone(),
            password: password.clone(),
            tables: tables.clone(),
        };
        let waiting = ctx
            .servers
            .ensure_reader(&target.conn, &grant, claimant)
            .await
            .map_err(Failure::Server)?;
        let readable: Vec<String> = tables
            .iter()
            .filter(|t| !waiting.contains(t))
            .cloned()
            .collect();
        let status = crate::api::ReaderStatus {
            service: reader.service.clone(),
            namespace: reader_ns.clone(),
            binding: secret_name.clone(),
            username,
            tables: readable.clone(),
            waiting: waiting.clone(),
            fingerprint: Some(password::fingerprint(uid, &password)),
        };
        let what = match (claim.spec.engine, readable.is_empty()) {
            (crate::api::Engine::Postgres, true) => "none of its tables yet".to_string(),
            (crate::api::Engine::Postgres, false) => format!("tables {}", readable.join(", ")),
            _ => "the whole database".to_string(),
        };
        let told = before.map(|b| (&b.tables, &b.fingerprint));
        if told != Some((&status.tables, &status.fingerprint)) {
            let mut note = format!(
                "Service {reader_ns}/{} may read {what} of database {:?}, through Secret {secret_name:?}",
                reader.service, target.database
            );
            if !waiting.is_empty() {
                note.push_str(&format!(
                    "; granted once they exist: {}",
                    waiting.join(", ")
                ));
            }
            publish(
                ctx,
                claim,
                EventType::Normal,
                Reason::ReadGranted,
                "Grant",
                note,
            )
            .await;
        }
        granted.push(status);
    }
    // Grants no longer named, or whose Service is gone, end: the user goes,
    // then its Secret.
    for gone in recorded.iter().filter(|r| {
        !granted
            .iter()
            .any(|g| g.service == r.service && g.namespace == r.namespace)
    }) {
        ctx.servers
            .drop_reader(
                &target.conn,
                &target.database,
                &gone.username,
                &claimant.mark,
            )
            .await
            .map_err(Failure::Server)?;
        // Its Secret goes, unless someone else's now holds the name.
        let secrets: Api<Secret> = ctx.api(&gone.namespace);
        let ours = secrets.get_opt(&gone.binding).await?.is_some_and(|s| {
            crate::children::foreign_reader_secret(&s, inputs, &gone.service).is_none()
        });
        if ours {
            delete_if_present(&secrets, &gone.binding).await?;
        }
        let note = format!(
            "Service {}/{} may no longer read database {:?}: its user {:?} was dropped and Secret {:?} deleted",
            gone.namespace, gone.service, target.database, gone.username, gone.binding
        );
        publish(
            ctx,
            claim,
            EventType::Normal,
            Reason::ReadRevoked,
            "Revoke",
            note,
        )
        .await;
    }
    Ok(granted)
}

/// The read-only user of Service `reader_namespace/service` on `database`
/// (of a claim in `claim_namespace`).
pub fn reader_username(
    database: &str,
    claim_namespace: &str,
    reader_namespace: &str,
    service: &str,
) -> String {
    let reader = match claim_namespace == reader_namespace {
        true => service.to_string(),
        false => format!("{reader_namespace}_{service}"),
    };
    crate::engines::bounded(&format!("{database}_r_{}", reader.replace('-', "_")))
}

/// Deletes `name`; gone already is fine.
async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `secret` (found under one of the claim's binding names) was kept
/// for another Service or not made by dbps: then it is left alone and the
/// claim fails with `ObjectOwnedByAnotherService`.
async fn refused_as_foreign(
    claim: &DatabaseClaim,
    service: &Service,
    secret: Option<&Secret>,
    ctx: &Context,
) -> Result<bool, Error> {
    let Some(message) =
        secret.and_then(|s| drift::foreign(&s.metadata, "Secret", claim, &service.name_any()))
    else {
        return Ok(false);
    };
    let outcome = Outcome::waiting(
        ClaimPhase::Failed,
        Reason::ObjectOwnedByAnotherService,
        message,
    );
    update_status(claim, ctx, outcome).await?;
    Ok(true)
}
