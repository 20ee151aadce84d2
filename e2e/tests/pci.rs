//! The PCI profile against real PostgreSQL servers: a claim gets its
//! database only on a server that refuses unencrypted connections and has
//! pgAudit loaded, its service's every access lands in the audit log (never
//! the card numbers it writes), the service cannot turn the log off, and an
//! RBAC grant that lets the namespace read the server's admin Secret is
//! caught and told.

use std::collections::BTreeMap;
use std::time::Duration;

use dbps_e2e::TestContext;
use dbps_e2e::claims::{reason_is, secret_values};
use dbps_e2e::databases::{LocalServer, PostgresOptions};
use dbps_e2e::fixtures::{self, wait_event};
use dbps_operator::api::{DatabaseClaim, find_condition};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use tokio_postgres::Client;

const PAN: &str = "4111111111111111";

/// Registers `server` as `name` over TLS, trusting its CA.
async fn register_tls(ctx: &TestContext, name: &str, server: &LocalServer) {
    let ca = server.ca_pem.clone().unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": format!("{name}-ca") }, "stringData": { "ca.crt": ca }
    }))
    .unwrap();
    ctx.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let tls = json!({ "tls": { "enabled": true, "caSecretRef": { "namespace": ctx.namespace, "name": format!("{name}-ca") } } });
    fixtures::register(ctx, name, server, tls).await;
}

async fn pci_claim(ctx: &TestContext, claim: &str, service: &str, server: &str) {
    fixtures::claim(
        ctx,
        claim,
        json!({ "serviceRef": { "name": service }, "engine": "postgres", "server": { "name": server },
                "profile": "PCI", "rotation": { "everySeconds": 2592000 } }),
    )
    .await;
}

/// Connects as a binding says, over TLS verifying the server against the
/// binding's CA and host name (`verify-full`).
async fn connect_tls(b: &BTreeMap<String, String>) -> Result<Client, tokio_postgres::Error> {
    let tls = dbps_operator::engines::Tls {
        ca_pem: Some(b["ca.crt"].clone()),
    };
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls.client_config().unwrap());
    let mut config = tokio_postgres::Config::new();
    config
        .host(&b["host"])
        .port(b["port"].parse().unwrap())
        .user(&b["username"])
        .password(&b["password"])
        .dbname(&b["database"])
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, conn) = config.connect(connector).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn connect_plain(b: &BTreeMap<String, String>) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&b["host"])
        .port(b["port"].parse().unwrap())
        .user(&b["username"])
        .password(&b["password"])
        .dbname(&b["database"])
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

fn compliant(claim: &DatabaseClaim) -> Option<(String, String, String)> {
    let c = find_condition(&claim.status.as_ref()?.conditions, "Compliant")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn compliant_is(
    status: &'static str,
    reason: &'static str,
) -> impl Fn(Option<&DatabaseClaim>) -> bool {
    move |c| {
        c.and_then(compliant)
            .is_some_and(|(s, r, _)| s == status && r == reason)
    }
}

#[tokio::test]
async fn a_pci_claim_gets_its_database_only_where_it_is_encrypted_audited_and_fenced() {
    // A short resync: an RBAC change is seen at the next check.
    let (ctx, _operator) = fixtures::with_operator("pci", Duration::from_secs(3)).await;
    let pci = LocalServer::start_postgres(PostgresOptions {
        tls: true,
        plaintext_too: false,
        preload: vec!["pgaudit".into()],
    })
    .await
    .unwrap();
    let lax = LocalServer::start_postgres(PostgresOptions {
        tls: true,
        plaintext_too: true,
        preload: vec!["pgaudit".into()],
    })
    .await
    .unwrap();
    let unaudited = LocalServer::start_postgres(PostgresOptions {
        tls: true,
        plaintext_too: false,
        preload: Vec::new(),
    })
    .await
    .unwrap();
    let names = ["pci", "lax", "unaudited"].map(|n| format!("{}-{n}", ctx.namespace));
    register_tls(&ctx, &names[0], &pci).await;
    register_tls(&ctx, &names[1], &lax).await;
    register_tls(&ctx, &names[2], &unaudited).await;
    for service in ["payments", "orders"] {
        fixtures::service(&ctx, service, json!({})).await;
    }
    let claims = ctx.api::<DatabaseClaim>();

    // Servers that do not meet the profile give out nothing.
    pci_claim(&ctx, "lax-db", "payments", &names[1]).await;
    pci_claim(&ctx, "unaudited-db", "payments", &names[2]).await;
    let refused = ctx
        .wait_for(
            &claims,
            "lax-db",
            "refused: plaintext",
            reason_is("PlaintextAccepted"),
        )
        .await;
    let (status, _, message) = compliant(&refused).unwrap();
    assert_eq!(status, "False");
    assert!(message.contains("hostssl"), "{message}");
    ctx.wait_for(
        &claims,
        "unaudited-db",
        "refused: no audit",
        reason_is("AuditUnavailable"),
    )
    .await;
    for claim in ["lax-db", "unaudited-db"] {
        assert!(
            fixtures::secret(&ctx, &format!("{claim}-binding"))
                .await
                .is_none(),
            "{claim} got a binding"
        );
    }
    let lax_admin = lax.admin_connection(dbps_operator::api::Engine::Postgres);
    let lax_dbs = dbps_operator::servers::Servers::default()
        .inspect(
            &lax_admin,
            &format!("{}_lax_db", ctx.namespace.replace('-', "_")),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        lax_dbs[0].2,
        dbps_operator::engines::Presence::Absent,
        "a refused claim got a database"
    );

    // On a server that meets it: Ready, Compliant, the binding asks for verify-full.
    pci_claim(&ctx, "payments-db", "payments", &names[0]).await;
    let ready = ctx
        .wait_for(&claims, "payments-db", "claim Ready", reason_is("Ready"))
        .await;
    let (status, reason, message) = compliant(&ready).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ProfileSatisfied"),
        "{message}"
    );
    assert!(
        ready
            .status
            .unwrap()
            .extensions
            .iter()
            .any(|e| e.name == "pgaudit"),
        "pgaudit is not listed"
    );
    let b = secret_values(
        &ctx.api::<Secret>()
            .get("payments-db-binding")
            .await
            .unwrap(),
    );
    assert_eq!(b["sslmode"], "verify-full");
    assert!(b["uri"].contains("sslmode=verify-full"), "{}", b["uri"]);
    assert_eq!(b["ca.crt"], pci.ca_pem.clone().unwrap());
    assert!(
        !b.values().any(|v| v == &pci.admin_password),
        "the binding holds the admin password"
    );

    // The service works over TLS, and only over TLS.
    let app = connect_tls(&b)
        .await
        .expect("TLS connection as the service");
    assert!(
        connect_plain(&b).await.is_err(),
        "an unencrypted connection was let in"
    );
    app.batch_execute("CREATE TABLE cards (holder text, pan text)")
        .await
        .unwrap();
    app.execute("INSERT INTO cards VALUES ($1, $2)", &[&"Ann Example", &PAN])
        .await
        .unwrap();
    let read: String = app
        .query_one("SELECT holder FROM cards", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(read, "Ann Example");
    // The audit log is not the service's to turn off.
    let off = app.batch_execute("SET pgaudit.log = 'none'").await;
    assert!(off.is_err(), "the service turned the audit log off");
    let off = app
        .batch_execute(&format!(
            "ALTER ROLE {} SET pgaudit.log = 'none'",
            b["username"]
        ))
        .await;
    assert!(off.is_err(), "the service changed its own audit setting");
    app.batch_execute("DELETE FROM cards").await.unwrap();

    // Every access is in the server's log, with the table, never the card number.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = pci.log();
        let audited = |kind: &str| {
            log.lines()
                .any(|l| l.contains("AUDIT: SESSION") && l.contains(kind) && l.contains("cards"))
        };
        if ["CREATE TABLE", "INSERT", "SELECT", "DELETE"]
            .iter()
            .all(|k| audited(k))
        {
            assert!(!log.contains(PAN), "a card number reached the audit log");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audit log misses the service's statements:\n{}",
            log.lines()
                .filter(|l| l.contains("AUDIT"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Another service of the namespace cannot reach the database.
    pci_claim(&ctx, "orders-db", "orders", &names[0]).await;
    ctx.wait_for(&claims, "orders-db", "orders Ready", reason_is("Ready"))
        .await;
    let orders = secret_values(&ctx.api::<Secret>().get("orders-db-binding").await.unwrap());
    let mut crossed = orders.clone();
    crossed.insert("database".into(), b["database"].clone());
    assert!(
        connect_tls(&crossed).await.is_err(),
        "orders reached the payments database"
    );

    // Someone lets the namespace read the server's admin Secret: the claim
    // is told (it keeps working); taking the grant back clears it.
    let admin_secret = format!("{}-admin", names[0]);
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "peek" },
        "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": [admin_secret] }]
    }))
    .unwrap();
    ctx.api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "peek" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "peek" },
        "subjects": [{ "kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": format!("system:serviceaccounts:{}", ctx.namespace) }]
    }))
    .unwrap();
    ctx.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let flagged = ctx
        .wait_for(
            &claims,
            "payments-db",
            "Compliant False",
            compliant_is("False", "AdminSecretReachable"),
        )
        .await;
    let (_, _, message) = compliant(&flagged).unwrap();
    assert!(message.contains(&admin_secret), "{message}");
    assert_eq!(
        find_condition(&flagged.status.unwrap().conditions, "Ready")
            .unwrap()
            .status,
        "True",
        "a placed claim stops working"
    );
    let (type_, _) = wait_event(&ctx, "payments-db", "AdminSecretReachable").await;
    assert_eq!(type_, "Warning");
    assert!(connect_tls(&b).await.is_ok());
    ctx.api::<RoleBinding>()
        .delete("peek", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_for(
        &claims,
        "payments-db",
        "Compliant again",
        compliant_is("True", "ProfileSatisfied"),
    )
    .await;
}
