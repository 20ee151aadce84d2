//! Leader election on a Lease (kube-lease-manager): only the replica holding
//! the Lease runs the controllers; the others wait as standbys and take over
//! when the leader stops renewing it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

/// Where the Lease is and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a leader holds the Lease without renewing it.
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {0}: {1}")]
    Lease(String, #[source] kube_lease_manager::LeaseManagerError),
    /// The work ended while leading, without being asked to (a panic in it):
    /// the process should end so that it is started again.
    #[error("the controllers ended while leading: {0}")]
    Ended(String),
}

/// A future that completes when the work must stop.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `work` whenever this replica leads, stopping it (through the signal
/// it is given) when leadership is lost, until `shutdown` completes; then the
/// Lease is released so a standby takes over at once. `on_change` hears every
/// change of leadership.
pub async fn run_while_leading<W, F>(
    client: Client,
    lease: LeaseSettings,
    mut work: W,
    on_change: impl Fn(bool),
    shutdown: impl Future<Output = ()>,
) -> Result<(), LeaderError>
where
    W: FnMut(StopSignal) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let seconds = lease.duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(seconds)
        .with_grace((seconds / 3).max(1))
        .with_field_manager("dbps-operator-lease")
        .build()
        .await
        .map_err(|e| LeaderError::Lease(lease.name.clone(), e))?;
    let (mut leading, task) = manager.watch().await;
    tokio::pin!(shutdown);
    loop {
        // Standby until the Lease is ours.
        while !*leading.borrow_and_update() {
            tokio::select! {
                _ = &mut shutdown => {
                    drop(leading);
                    let _ = task.await;
                    return Ok(());
                }
                changed = leading.changed() => if changed.is_err() {
                    return Ok(());
                }
            }
        }
        tracing::info!(lease = %lease.name, identity = %lease.identity, "leading");
        on_change(true);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut running = tokio::spawn(work(Box::pin(async move {
            let _ = stopped.await;
        })));
        enum Why {
            Shutdown,
            Lost,
            Ended(String),
        }
        let why = tokio::select! {
            _ = &mut shutdown => Why::Shutdown,
            _ = lost(&mut leading) => Why::Lost,
            ended = &mut running => Why::Ended(match ended {
                Ok(()) => "they returned".to_string(),
                Err(e) => e.to_string(),
            }),
        };
        let _ = stop.send(());
        if !matches!(why, Why::Ended(_)) {
            let _ = running.await;
        }
        on_change(false);
        match why {
            Why::Lost => tracing::warn!(lease = %lease.name, "lost the lease; standing by"),
            Why::Shutdown => {
                drop(leading);
                let _ = task.await;
                return Ok(());
            }
            // The Lease is released on the way out, so a standby takes over.
            Why::Ended(why) => {
                drop(leading);
                let _ = task.await;
                return Err(LeaderError::Ended(why));
            }
        }
    }
}

async fn lost(leading: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if leading.changed().await.is_err() || !*leading.borrow() {
            return;
        }
    }
}
