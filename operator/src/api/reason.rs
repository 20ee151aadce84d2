//! Every reason dbps reports: in conditions, in events, in error logs and as
//! the `reason` label of `dbps_reconcile_errors_total`. One enum, so a reason
//! is never a string compared by hand.

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// A PascalCase reason.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The reason as Kubernetes shows it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    /// The database accepts the service's credentials.
    Ready,
    /// Objects written; the database is not ready yet.
    Provisioning,
    /// The claim's `Service` does not exist.
    ServiceNotFound,
    /// The claim cannot be fulfilled as written.
    InvalidSpec,
    /// The object does not match the schema of this API version.
    InvalidObject,
    /// Writing a Kubernetes object failed (e.g. a missing permission).
    ApplyFailed,
    /// A Kubernetes API call failed.
    KubernetesApi,
    /// The finalizer could not be added or removed.
    Finalizer,
    /// The claim's `DatabaseServer` does not exist.
    ServerNotFound,
    /// The server does not accept claims from this namespace.
    NamespaceNotAllowed,
    /// The server's admin Secret does not exist.
    AdminSecretNotFound,
    /// The server's admin Secret lacks `username` or `password`.
    AdminSecretInvalid,
    /// The server's CA Secret does not exist.
    CaSecretNotFound,
    /// The server does not answer.
    ServerUnreachable,
    /// The operator cannot reach the claim's dedicated instance (its pod is
    /// not running, or the network does not let the operator's connection in).
    InstanceUnreachable,
    /// The claim's dedicated instance does not start: its pod cannot be
    /// scheduled, or a container is stuck (its image cannot be pulled, it
    /// cannot be made, or it keeps exiting). The message quotes the
    /// scheduler or the kubelet.
    InstanceNotStarting,
    /// The server refused the admin credentials.
    ServerAuthenticationFailed,
    /// The server refused a statement.
    ServerRefused,
    /// TLS to the server failed.
    ServerTlsFailed,
    /// The claim asks for an extension the platform's allow-list does not
    /// name (the server's `allowedExtensions`, or the operator's
    /// `--postgres-extensions` for dedicated instances).
    ExtensionNotAllowed,
    /// An extension could not be created as asked: the server does not have
    /// it, or it exists in another schema.
    ExtensionFailed,
    /// An extension removed from the claim is kept: objects of the database use it.
    ExtensionInUse,
    /// Another Service may now read the claim's database (event).
    ReadGranted,
    /// Another Service's read access to the claim's database ended (event).
    ReadRevoked,
    /// The claim's database meets its compliance profile.
    ProfileSatisfied,
    /// The profile needs TLS only, and the server is not registered with TLS
    /// or accepts unencrypted connections.
    PlaintextAccepted,
    /// The profile needs an audit log, and the server has not loaded pgAudit
    /// (`shared_preload_libraries`).
    AuditUnavailable,
    /// The profile keeps the server's admin credentials from workloads, and a
    /// ServiceAccount of the claim's namespace may read its admin Secret.
    AdminSecretReachable,
    /// The server answers as the registration expects.
    Reachable,
    /// A database or user of that name on the server belongs to another claim.
    DatabaseOwnedByAnotherClaim,
    /// A database or user of that name exists on the server and was not made by dbps.
    DatabaseExists,
    /// A Kubernetes object of the name dbps would write belongs to another
    /// Service, or was not made by dbps.
    ObjectOwnedByAnotherService,
    /// A retained volume exists without the credentials it was initialised with.
    VolumeWithoutCredentials,
    /// The requested version changes the major version of a running instance.
    MajorVersionChange,
    /// Cleanup outside Kubernetes failed; retried.
    CleanupFailed,
    /// A binding Secret was edited by hand; dbps issued new credentials.
    BindingSecretEdited,
    /// A binding Secret was deleted; dbps wrote it again.
    BindingSecretDeleted,
    /// The admin Secret of a dedicated instance was edited by hand.
    AdminSecretEdited,
    /// A pre-existing database was adopted, as the DatabaseServer allows.
    Adopted,
    /// Credentials were rotated.
    Rotated,
    /// The claim's data was kept on deletion.
    Retained,
    /// The claim's data was deleted.
    Deleted,
    /// Every database of a Service is ready.
    DatabasesReady,
    /// Some database of a Service is not ready.
    DatabasesNotReady,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    /// The reason of a condition as Kubernetes returned it, if it is one of ours.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    /// Waiting on input a person must change, rather than on a fault that
    /// passes: such reconciles wait for a change instead of retrying.
    pub fn is_permanent(self) -> bool {
        matches!(self, Reason::InvalidObject | Reason::InvalidSpec)
    }

    /// Whether the database is refused because of what another owner holds:
    /// nothing on the server or in the namespace was changed.
    pub fn is_conflict(self) -> bool {
        matches!(
            self,
            Reason::DatabaseOwnedByAnotherClaim
                | Reason::DatabaseExists
                | Reason::ObjectOwnedByAnotherService
                | Reason::VolumeWithoutCredentials
                | Reason::MajorVersionChange
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_pascal_case_and_round_trip() {
        for reason in Reason::ALL {
            let s = reason.as_str();
            assert!(s.chars().next().unwrap().is_ascii_uppercase(), "{s}");
            assert!(s.chars().all(|c| c.is_ascii_alphanumeric()), "{s}");
            assert_eq!(Reason::parse(s), Some(*reason));
        }
        assert_eq!(Reason::parse("ServerUnavailable"), None);
    }
}
