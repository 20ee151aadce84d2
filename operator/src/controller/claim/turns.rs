//! Turns at a server. A server takes a few of its claims at a time (four
//! times its `maxConnections`: a claim's turn also holds its apiserver
//! requests, and the server's sessions should not wait for those); the others
//! wait in the server's line without holding one of the operator's
//! reconcile slots, and are woken one by one as turns end. Claims on
//! different servers never wait for each other.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;

use crate::api::DatabaseClaim;

/// A claim as the controller schedules it.
pub type ClaimRef = ObjectRef<DeserializeGuard<DatabaseClaim>>;

/// `claim` as the controller schedules it.
pub fn line_of(claim: &DatabaseClaim) -> ClaimRef {
    use kube::ResourceExt;
    ClaimRef::new(&claim.name_any()).within(&claim.namespace().unwrap_or_default())
}

/// A server, by where the operator reaches it.
type ServerKey = (String, u16);

#[derive(Default)]
struct Line {
    taken: usize,
    waiting: VecDeque<ClaimRef>,
    queued: HashSet<ClaimRef>,
}

/// The lines of every server, and where woken claims are sent.
pub struct Turns {
    lines: Mutex<HashMap<ServerKey, Line>>,
    wake: tokio::sync::mpsc::UnboundedSender<ClaimRef>,
}

/// A claim's turn at a server; the next in line is woken when it ends.
pub struct Turn {
    turns: Arc<Turns>,
    server: ServerKey,
}

impl Turns {
    /// The lines, and the stream of claims woken for their turn.
    pub fn new() -> (Arc<Self>, tokio::sync::mpsc::UnboundedReceiver<ClaimRef>) {
        let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
        let turns = Arc::new(Self {
            lines: Mutex::default(),
            wake,
        });
        (turns, woken)
    }

    /// A turn for `claim` at the server `host`:`port`, which takes
    /// `capacity` claims at a time; `None` puts the claim in line (once),
    /// to be woken when a turn ends.
    pub fn take(
        self: &Arc<Self>,
        host: &str,
        port: u16,
        capacity: usize,
        claim: ClaimRef,
    ) -> Option<Turn> {
        let server = (host.to_string(), port);
        let mut lines = self.lines.lock().unwrap();
        let line = lines.entry(server.clone()).or_default();
        if line.taken < capacity.max(1) {
            line.taken += 1;
            if line.queued.remove(&claim) {
                line.waiting.retain(|c| *c != claim);
            }
            return Some(Turn {
                turns: self.clone(),
                server,
            });
        }
        if line.queued.insert(claim.clone()) {
            line.waiting.push_back(claim);
        }
        None
    }

    /// Where woken claims are sent, for others that wake claims.
    pub fn waker(&self) -> tokio::sync::mpsc::UnboundedSender<ClaimRef> {
        self.wake.clone()
    }

    /// Claims waiting in lines, over all servers.
    pub fn waiting(&self) -> usize {
        self.lines
            .lock()
            .unwrap()
            .values()
            .map(|l| l.waiting.len())
            .sum()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut lines = self.turns.lines.lock().unwrap();
        let Some(line) = lines.get_mut(&self.server) else {
            return;
        };
        line.taken = line.taken.saturating_sub(1);
        if let Some(next) = line.waiting.pop_front() {
            line.queued.remove(&next);
            let _ = self.turns.wake.send(next);
        }
        if line.taken == 0 && line.waiting.is_empty() {
            lines.remove(&self.server);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str) -> ClaimRef {
        ObjectRef::new(name).within("shop")
    }

    #[tokio::test]
    async fn a_full_server_lines_claims_up_and_wakes_them_in_order_without_holding_up_another() {
        let (turns, mut woken) = Turns::new();
        let a = turns.take("pg-a", 5432, 2, claim("a1")).unwrap();
        let b = turns.take("pg-a", 5432, 2, claim("a2")).unwrap();
        assert!(turns.take("pg-a", 5432, 2, claim("a3")).is_none());
        assert!(turns.take("pg-a", 5432, 2, claim("a4")).is_none());
        assert!(
            turns.take("pg-a", 5432, 2, claim("a3")).is_none(),
            "in line once"
        );
        assert_eq!(turns.waiting(), 2);
        // Another server is not held up by the first one's line.
        let other = turns.take("pg-b", 5432, 2, claim("b1"));
        assert!(other.is_some());

        drop(a);
        assert_eq!(woken.recv().await.unwrap(), claim("a3"));
        let c = turns.take("pg-a", 5432, 2, claim("a3")).unwrap();
        assert_eq!(turns.waiting(), 1);
        drop(b);
        assert_eq!(woken.recv().await.unwrap(), claim("a4"));
        drop(c);
        drop(other);
        assert!(woken.try_recv().is_err());
        assert_eq!(turns.waiting(), 0);
        assert!(
            turns.lines.lock().unwrap().is_empty(),
            "an idle server's line is forgotten"
        );
    }
}
