//! The registered database servers and dedicated instances as the operator
//! administers them: connections bounded per server, one reconcile at a time
//! per database name, every operation under a timeout, the server's answer
//! about itself remembered. What is done is the engine's
//! [`Administration`](crate::engines::Administration).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedMutexGuard, Semaphore};

use crate::engines::DEFAULT_CONNECTIONS_PER_SERVER;
use crate::engines::{
    AdminError, Claimant, Connection, Dropped, Extensions, Grant, Inventory, Mark, Provisioned,
    ReadGrant, ServerInfo, TIMEOUT, bounded,
};

/// A server, by where it is reached.
type ServerKey = (String, u16);

/// A digest of what `conn` logs in with, to tell whether an answer was
/// given to the same credentials (kept in memory only).
fn credentials(conn: &Connection) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        conn.engine.as_str(),
        &conn.username,
        &conn.password,
        conn.tls.as_ref().map(|t| &t.ca_pem),
    )
        .hash(&mut hasher);
    hasher.finish()
}

/// Entry point, shared by all reconciles: bounds connections per server.
#[derive(Default)]
pub struct Servers {
    /// Connections each server takes at once, and their permits.
    limits: Mutex<HashMap<ServerKey, (usize, Arc<Semaphore>)>>,
    infos: Mutex<HashMap<(String, u16), ServerInfo>>,
    /// When each server last answered [`Self::info`], and to which
    /// credentials (a digest): a pass that asks again soon after, with the
    /// same ones, takes that answer. A failed probe forgets it.
    probed: Mutex<HashMap<ServerKey, (std::time::Instant, u64)>>,
    /// One reconcile at a time per database on a server: two claims naming
    /// the same database never both find it free.
    names: crate::locks::KeyedLocks<(String, u16, String)>,
}

impl Servers {
    /// Holds the database name `database` on the server of `conn`.
    async fn hold(&self, conn: &Connection, database: &str) -> OwnedMutexGuard<()> {
        let key = (conn.host.clone(), conn.port, database.to_string());
        self.names.lock(key).await
    }

    async fn limited<T>(
        &self,
        conn: &Connection,
        op: impl std::future::Future<Output = Result<T, AdminError>>,
    ) -> Result<T, AdminError> {
        let semaphore = self
            .limits
            .lock()
            .unwrap()
            .entry((conn.host.clone(), conn.port))
            .or_insert_with(|| {
                let n = DEFAULT_CONNECTIONS_PER_SERVER;
                (n, Arc::new(Semaphore::new(n)))
            })
            .1
            .clone();
        let _permit = semaphore
            .acquire_owned()
            .await
            .expect("semaphore never closes");
        tokio::time::timeout(TIMEOUT * 3, op)
            .await
            .map_err(|_| AdminError::Timeout)?
    }

    /// Sets how many connections the server of `conn` takes at once (its
    /// `maxConnections`); operations under way keep theirs.
    pub fn set_connections(&self, conn: &Connection, connections: usize) {
        let connections = connections.max(1);
        let mut limits = self.limits.lock().unwrap();
        let key = (conn.host.clone(), conn.port);
        if limits.get(&key).is_none_or(|(n, _)| *n != connections) {
            limits.insert(key, (connections, Arc::new(Semaphore::new(connections))));
        }
    }

    /// Version and capabilities of the server, asked now.
    pub async fn info(&self, conn: &Connection) -> Result<ServerInfo, AdminError> {
        let key = (conn.host.clone(), conn.port);
        let info = self
            .limited(conn, async { conn.engine.admin().info(conn).await })
            .await
            .inspect_err(|_| self.forget_answer(conn))?;
        self.probed
            .lock()
            .unwrap()
            .insert(key.clone(), (std::time::Instant::now(), credentials(conn)));
        self.infos.lock().unwrap().insert(key, info.clone());
        Ok(info)
    }

    /// The server of `conn` failed an operation: its last answer to
    /// [`Self::info`] is not taken by [`Self::recent_info`] any more.
    pub fn forget_answer(&self, conn: &Connection) {
        self.probed
            .lock()
            .unwrap()
            .remove(&(conn.host.clone(), conn.port));
    }

    /// As [`Self::info`], from its last answer when the server gave it less
    /// than `within` ago to the same credentials and nothing failed since.
    pub async fn recent_info(
        &self,
        conn: &Connection,
        within: std::time::Duration,
    ) -> Result<ServerInfo, AdminError> {
        let key = (conn.host.clone(), conn.port);
        let fresh = self
            .probed
            .lock()
            .unwrap()
            .get(&key)
            .is_some_and(|(at, digest)| at.elapsed() < within && *digest == credentials(conn));
        let known = self.infos.lock().unwrap().get(&key).cloned();
        match known.filter(|_| fresh) {
            Some(info) => Ok(info),
            None => self.info(conn).await,
        }
    }

    /// As [`Self::info`], from the last answer when there is one.
    pub async fn cached_info(&self, conn: &Connection) -> Result<ServerInfo, AdminError> {
        let cached = self
            .infos
            .lock()
            .unwrap()
            .get(&(conn.host.clone(), conn.port))
            .cloned();
        match cached {
            Some(info) => Ok(info),
            None => self.info(conn).await,
        }
    }

    /// Makes `grant.database` exist, owned by `grant.username`, whose password
    /// is `grant.password` and who can reach no other database, every object
    /// marked as the claimant's. Reads the marks first: an object of another
    /// claim, or one dbps did not make (unless the claimant may adopt it),
    /// fails with [`AdminError::Conflict`] and nothing is changed. Idempotent.
    pub async fn ensure(
        &self,
        conn: &Connection,
        grant: &Grant,
        claimant: &Claimant,
    ) -> Result<Provisioned, AdminError> {
        // Asked before taking a connection slot (info takes one itself).
        let server = self.cached_info(conn).await?;
        let _held = self.hold(conn, &grant.database).await;
        let asked = std::time::Instant::now();
        let mut began = asked;
        let done = self
            .limited(conn, async {
                began = std::time::Instant::now();
                conn.engine
                    .admin()
                    .ensure(conn, &server, grant, claimant)
                    .await
            })
            .await;
        tracing::debug!(
            database = %grant.database,
            waited_ms = (began - asked).as_millis() as u64,
            took_ms = began.elapsed().as_millis() as u64,
            "ensured"
        );
        done
    }

    /// Drops the database and the users (ending their sessions first) that
    /// carry `mark`, and nothing else. Idempotent: what is gone is skipped.
    pub async fn drop_database(
        &self,
        conn: &Connection,
        database: &str,
        usernames: &[String],
        mark: &Mark,
    ) -> Result<Dropped, AdminError> {
        let _held = self.hold(conn, database).await;
        self.limited(
            conn,
            conn.engine
                .admin()
                .drop_database(conn, database, usernames, mark),
        )
        .await
    }

    /// Ends `username`'s access if it carries `mark`: it can no longer log
    /// in, and its open sessions end where the engine allows. Idempotent.
    pub async fn revoke(
        &self,
        conn: &Connection,
        database: &str,
        username: &str,
        mark: &Mark,
    ) -> Result<(), AdminError> {
        let _held = self.hold(conn, database).await;
        self.limited(
            conn,
            conn.engine.admin().revoke(conn, database, username, mark),
        )
        .await
    }

    /// Makes `database`'s extensions those `wanted` (see
    /// [`Administration::extensions`](crate::engines::Administration::extensions)).
    pub async fn extensions(
        &self,
        conn: &Connection,
        database: &str,
        wanted: &[crate::api::Extension],
        mark: &Mark,
    ) -> Result<Extensions, AdminError> {
        let _held = self.hold(conn, database).await;
        self.limited(
            conn,
            conn.engine.admin().extensions(conn, database, wanted, mark),
        )
        .await
    }

    /// Makes the read-only user of `grant` (see
    /// [`Administration::ensure_reader`](crate::engines::Administration::ensure_reader));
    /// returns the tables that do not exist yet.
    pub async fn ensure_reader(
        &self,
        conn: &Connection,
        grant: &ReadGrant,
        claimant: &Claimant,
    ) -> Result<Vec<String>, AdminError> {
        let _held = self.hold(conn, &grant.database).await;
        self.limited(
            conn,
            conn.engine.admin().ensure_reader(conn, grant, claimant),
        )
        .await
    }

    /// Drops the read-only user `username` of `database` if it carries `mark`.
    pub async fn drop_reader(
        &self,
        conn: &Connection,
        database: &str,
        username: &str,
        mark: &Mark,
    ) -> Result<(), AdminError> {
        let _held = self.hold(conn, database).await;
        self.limited(
            conn,
            conn.engine
                .admin()
                .drop_reader(conn, database, username, mark),
        )
        .await
    }

    /// True when the server refuses an unencrypted connection of `username` to `database`.
    pub async fn refuses_plaintext(
        &self,
        conn: &Connection,
        database: &str,
        username: &str,
    ) -> Result<bool, AdminError> {
        self.limited(
            conn,
            conn.engine
                .admin()
                .refuses_plaintext(conn, database, username),
        )
        .await
    }

    /// True when the server can keep an audit log.
    pub async fn can_audit(&self, conn: &Connection) -> Result<bool, AdminError> {
        self.limited(conn, conn.engine.admin().can_audit(conn))
            .await
    }

    /// Turns the audit log on for `database`.
    pub async fn audit(&self, conn: &Connection, database: &str) -> Result<(), AdminError> {
        let _held = self.hold(conn, database).await;
        self.limited(conn, conn.engine.admin().audit(conn, database))
            .await
    }

    /// What the server holds under the names of a claim's database and users.
    pub async fn inspect(
        &self,
        conn: &Connection,
        database: &str,
        usernames: &[String],
    ) -> Result<Inventory, AdminError> {
        self.limited(conn, conn.engine.admin().inspect(conn, database, usernames))
            .await
    }

    /// True when `username`/`password` log in to `database`.
    pub async fn can_login(&self, conn: &Connection, grant: &Grant) -> bool {
        self.limited(conn, async {
            Ok(conn.engine.admin().can_login(conn, grant).await)
        })
        .await
        .unwrap_or(false)
    }
}

/// A name for a database or user on a shared server, unique per namespace and
/// at most 63 bytes: `<namespace>_<name>` with `-` as `_`, shortened with a
/// hash of the whole when too long.
pub fn shared_identifier(namespace: &str, name: &str) -> String {
    bounded(&format!("{namespace}_{name}").replace(['-', '.'], "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_identifiers_are_namespaced_and_bounded() {
        assert_eq!(shared_identifier("shop", "orders_db"), "shop_orders_db");
        assert_eq!(shared_identifier("team-a", "orders"), "team_a_orders");
        let long = shared_identifier(&"n".repeat(63), "orders_db");
        assert_eq!(long.len(), 63);
        assert_ne!(long, shared_identifier(&"n".repeat(62), "orders_db"));
        assert_eq!(
            long,
            shared_identifier(&"n".repeat(63), "orders_db"),
            "deterministic"
        );
    }
}
