//! Ownership marks: every database and user dbps makes on a server carries
//! the identity of the claim that owns it, stored on the server itself
//! (PostgreSQL: `COMMENT ON DATABASE/ROLE`; MongoDB and InfluxDB: a catalog
//! database of their own). Before dbps creates, grants, resets a password,
//! revokes or drops anything, it reads the marks and decides here, without a
//! connection, whether the claim may touch it.

use serde::{Deserialize, Serialize};

/// Prefix of every mark, so a comment written by someone else is never read
/// as one of ours.
const MAGIC: &str = "dbps.io/owner ";

/// The claim that owns a database or user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The cluster the claim lives in (UID of its `kube-system` namespace):
    /// two clusters sharing a server never take each other's databases.
    pub cluster: String,
    pub namespace: String,
    /// The claim's name and UID.
    pub claim: String,
    pub uid: String,
    /// The owning `Service` (dbps.io).
    pub service: String,
}

impl Mark {
    /// The text stored on the server.
    pub fn encode(&self) -> String {
        format!(
            "{MAGIC}{}",
            serde_json::to_string(self).expect("a mark serializes")
        )
    }

    /// A mark read from the server; `None` for text that is not a dbps mark.
    pub fn decode(text: &str) -> Option<Mark> {
        serde_json::from_str(text.strip_prefix(MAGIC)?).ok()
    }

    /// The same claim by identity, though perhaps re-created (another UID):
    /// same cluster, namespace, claim name and Service.
    fn same_claim(&self, other: &Mark) -> bool {
        self.cluster == other.cluster
            && self.namespace == other.namespace
            && self.claim == other.claim
            && self.service == other.service
    }

    /// `namespace/claim (Service s)`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "claim {}/{} (Service {:?})",
            self.namespace, self.claim, self.service
        )
    }
}

/// What a server holds under one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presence {
    Absent,
    /// Exists without a dbps mark: made by someone else.
    Unmarked,
    Marked(Mark),
}

impl Presence {
    /// From "does it exist" and "its mark text, if any". A mark without its
    /// object still counts: on MongoDB and InfluxDB the mark is written first,
    /// as a reservation, so a claim that stopped between the two keeps it.
    pub fn of(exists: bool, mark: Option<&str>) -> Presence {
        match (exists, mark.and_then(Mark::decode)) {
            (_, Some(mark)) => Presence::Marked(mark),
            (true, None) => Presence::Unmarked,
            (false, None) => Presence::Absent,
        }
    }
}

/// What kind of object a name is on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Database,
    User,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Database => "database",
            ObjectKind::User => "user",
        })
    }
}

/// What may be done to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It does not exist: create it, with the mark.
    Create,
    /// It carries this claim's mark.
    Ours,
    /// It carries the mark of this claim before it was re-created (deleted
    /// with `Retain`, then made again with the same name and Service): the
    /// mark is rewritten with the new UID.
    Reattach,
    /// It exists without a mark and the platform team lets this claim adopt it.
    Adopt,
}

/// Why a claim may not touch an object. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("{kind} {name:?} belongs to {}; nothing on the server was changed. Choose another spec.database", .owner.describe())]
    OwnedByAnotherClaim {
        kind: ObjectKind,
        name: String,
        owner: Box<Mark>,
    },
    #[error(
        "{kind} {name:?} exists on the server and was not made by dbps; nothing on the server was changed. Choose another spec.database, or ask the platform team to let this claim adopt it (DatabaseServer spec.adoptions)"
    )]
    Exists { kind: ObjectKind, name: String },
}

/// Whether `mine` may use an object found as `presence`.
pub fn verdict(
    kind: ObjectKind,
    name: &str,
    presence: &Presence,
    mine: &Mark,
    adopt: bool,
) -> Result<Verdict, Conflict> {
    match presence {
        Presence::Absent => Ok(Verdict::Create),
        Presence::Marked(mark) if mark == mine => Ok(Verdict::Ours),
        Presence::Marked(mark) if mark.same_claim(mine) => Ok(Verdict::Reattach),
        Presence::Marked(mark) => Err(Conflict::OwnedByAnotherClaim {
            kind,
            name: name.to_string(),
            owner: Box::new(mark.clone()),
        }),
        Presence::Unmarked if adopt => Ok(Verdict::Adopt),
        Presence::Unmarked => Err(Conflict::Exists {
            kind,
            name: name.to_string(),
        }),
    }
}

/// True when the object was made for exactly this claim (same UID): the only
/// objects a deletion or a revocation may touch.
pub fn owned_by(presence: &Presence, mine: &Mark) -> bool {
    matches!(presence, Presence::Marked(mark) if mark == mine)
}

/// The verdicts for every object of a claim, in order; the first conflict
/// (the database comes first) refuses them all.
pub fn authorize(
    objects: &[(ObjectKind, String, Presence)],
    claimant: &Claimant,
) -> Result<Vec<Verdict>, Conflict> {
    objects
        .iter()
        .map(|(kind, name, presence)| {
            verdict(*kind, name, presence, &claimant.mark, claimant.adopt)
        })
        .collect()
}

/// Of the objects found under a claim's names, those a deletion by `mine`
/// drops (they carry its mark), and the names of those it leaves.
pub fn droppable(found: super::Inventory, mine: &Mark) -> (Vec<(ObjectKind, String)>, Vec<String>) {
    let mut drop = Vec::new();
    let mut kept = Vec::new();
    for (kind, name, presence) in found {
        match presence {
            Presence::Absent => {}
            p if owned_by(&p, mine) => drop.push((kind, name)),
            _ => kept.push(name),
        }
    }
    (drop, kept)
}

/// Who may do what with the objects of one claim on one server.
#[derive(Clone, Debug)]
pub struct Claimant {
    pub mark: Mark,
    /// The platform team lets this claim adopt an unmarked database (and its
    /// users of the names dbps would give them).
    pub adopt: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(claim: &str, uid: &str, service: &str) -> Mark {
        Mark {
            cluster: "c1".into(),
            namespace: "shop".into(),
            claim: claim.into(),
            uid: uid.into(),
            service: service.into(),
        }
    }

    #[test]
    fn marks_round_trip_and_foreign_text_is_not_a_mark() {
        let m = mark("orders-db", "u1", "orders");
        assert_eq!(Mark::decode(&m.encode()), Some(m.clone()));
        assert!(m.encode().starts_with("dbps.io/owner {"));
        assert_eq!(Mark::decode("the orders database"), None);
        assert_eq!(Mark::decode("dbps.io/owner not json"), None);
        assert_eq!(Presence::of(true, Some("legacy")), Presence::Unmarked);
        assert_eq!(Presence::of(true, None), Presence::Unmarked);
        assert_eq!(Presence::of(false, Some("legacy")), Presence::Absent);
        assert_eq!(Presence::of(false, Some(&m.encode())), Presence::Marked(m));
    }

    #[test]
    fn only_the_owning_claim_proceeds() {
        let orders = mark("orders-db", "u1", "orders");
        let db = ObjectKind::Database;
        let v = |p: &Presence, mine: &Mark, adopt| verdict(db, "shop_orders_db", p, mine, adopt);
        assert_eq!(v(&Presence::Absent, &orders, false), Ok(Verdict::Create));
        let owned = Presence::Marked(orders.clone());
        assert_eq!(v(&owned, &orders, false), Ok(Verdict::Ours));
        assert!(owned_by(&owned, &orders));

        // Another claim of another Service, same database name: refused, even with adoption.
        let intruder = mark("orders-copy", "u9", "intruder");
        for adopt in [false, true] {
            let refused = v(&owned, &intruder, adopt).unwrap_err();
            assert!(
                matches!(&refused, Conflict::OwnedByAnotherClaim { owner, .. } if **owner == orders)
            );
            assert!(refused.to_string().contains("claim shop/orders-db"));
        }
        assert!(!owned_by(&owned, &intruder));
        // The same claim name under another Service is not the same claim.
        let same_name = mark("orders-db", "u9", "intruder");
        assert!(v(&owned, &same_name, false).is_err());
        // Same name and Service in another cluster: refused.
        let elsewhere = Mark {
            cluster: "c2".into(),
            ..mark("orders-db", "u9", "orders")
        };
        assert!(v(&owned, &elsewhere, false).is_err());
        // Re-created with the same name and Service: reattached, but a
        // deletion would not touch it until the mark carries the new UID.
        let recreated = mark("orders-db", "u2", "orders");
        assert_eq!(v(&owned, &recreated, false), Ok(Verdict::Reattach));
        assert!(!owned_by(&owned, &recreated));
    }

    #[test]
    fn unmarked_objects_are_adopted_only_when_allowed() {
        let orders = mark("orders-db", "u1", "orders");
        let refused = verdict(
            ObjectKind::User,
            "legacy",
            &Presence::Unmarked,
            &orders,
            false,
        )
        .unwrap_err();
        assert_eq!(
            refused,
            Conflict::Exists {
                kind: ObjectKind::User,
                name: "legacy".into()
            }
        );
        assert!(refused.to_string().contains("spec.adoptions"));
        assert_eq!(
            verdict(
                ObjectKind::User,
                "legacy",
                &Presence::Unmarked,
                &orders,
                true
            ),
            Ok(Verdict::Adopt)
        );
        assert!(!owned_by(&Presence::Unmarked, &orders));
    }
}
