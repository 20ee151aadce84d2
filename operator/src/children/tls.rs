//! TLS of a dedicated instance that serves TLS only (OpenSearch): the
//! operator makes a CA for that instance alone, signs the instance's
//! serving certificate with it and forgets the CA's key. The CA goes to the
//! binding (`ca.crt`), so a service trusts this one instance and nothing
//! else; certificate and key go to the instance's admin Secret, which only
//! the instance's pods mount. A new certificate is issued when the names the
//! instance is reached by change or the Secret no longer holds a whole one.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{Timestamp, tz::TimeZone};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::secret_value;

/// Keys of the instance's TLS in its admin Secret.
pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
/// The names and addresses the certificate was issued for, comma-separated.
pub const NAMES_KEY: &str = "tls.names";

/// Years the CA and the certificate are valid.
const VALID_YEARS: i16 = 10;

/// An instance's CA and serving certificate (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// What the certificate names ([`NAMES_KEY`]).
    pub names: String,
}

impl std::fmt::Debug for InstanceTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InstanceTls {{ names: {:?}, .. }}", self.names)
    }
}

/// The names an instance is reached by: its Service's DNS names, its
/// cluster IP (the operator connects there) and its own loopback (the
/// readiness probe).
pub fn names(instance: &str, namespace: &str, domain: &str, cluster_ip: Option<&str>) -> String {
    let mut names = vec![
        format!("{instance}.{namespace}.svc.{domain}"),
        format!("{instance}.{namespace}.svc"),
        format!("{instance}.{namespace}"),
        instance.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    names.extend(cluster_ip.map(String::from));
    names.join(",")
}

impl InstanceTls {
    /// A new CA and a certificate of `common_name` for `names` (see
    /// [`names`]), usable for serving and by the node as its own transport
    /// peer.
    pub fn issue(common_name: &str, names: &str) -> Result<Self, rcgen::Error> {
        let today = Timestamp::now().to_zoned(TimeZone::UTC).date();
        let from = today.yesterday().unwrap_or(today);
        let not_before =
            rcgen::date_time_ymd(from.year().into(), from.month() as u8, from.day() as u8);
        let not_after = rcgen::date_time_ymd(
            (from.year() + VALID_YEARS).into(),
            from.month() as u8,
            from.day().min(28) as u8,
        );
        let dn = |cn: &str| {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            dn
        };

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name = dn(&format!("dbps CA of {common_name}"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = not_before;
        ca.not_after = not_after;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);

        let mut leaf = CertificateParams::new(Vec::<String>::new())?;
        for name in names.split(',').filter(|n| !n.is_empty()) {
            leaf.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.try_into()?),
            });
        }
        leaf.distinguished_name = dn(common_name);
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf.not_before = not_before;
        leaf.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert_pem = leaf.signed_by(&key, &issuer)?.pem();
        Ok(Self {
            ca_pem,
            cert_pem,
            key_pem: key.serialize_pem(),
            names: names.to_string(),
        })
    }

    /// What an admin Secret holds, when it holds all of it.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        Some(Self {
            ca_pem: secret_value(secret, CA_KEY)?,
            cert_pem: secret_value(secret, CERT_KEY)?,
            key_pem: secret_value(secret, KEY_KEY)?,
            names: secret_value(secret, NAMES_KEY)?,
        })
    }

    /// Whether the certificate is whole: it chains to the CA, serves every
    /// name it was issued for and matches the key. An edited Secret fails
    /// this, and the instance gets a new certificate.
    pub fn sound(&self) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{
            CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject,
        };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let (Ok(ca), Ok(cert), Ok(key)) = (
            CertificateDer::from_pem_slice(self.ca_pem.as_bytes()),
            CertificateDer::from_pem_slice(self.cert_pem.as_bytes()),
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()),
        ) else {
            return false;
        };
        let mut roots = rustls::RootCertStore::empty();
        if roots.add(ca).is_err() {
            return false;
        }
        let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider.clone(),
        )
        .build() else {
            return false;
        };
        let serves_all = self.names.split(',').all(|name| {
            ServerName::try_from(name.to_string()).is_ok_and(|name| {
                verifier
                    .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                    .is_ok()
            })
        });
        serves_all
            && rustls::sign::CertifiedKey::from_der(vec![cert], key, &provider)
                .is_ok_and(|k| k.keys_match().is_ok())
    }

    /// The Secret's entries.
    pub fn entries(&self) -> [(&'static str, String); 4] {
        [
            (CA_KEY, self.ca_pem.clone()),
            (CERT_KEY, self.cert_pem.clone()),
            (KEY_KEY, self.key_pem.clone()),
            (NAMES_KEY, self.names.clone()),
        ]
    }

    /// A short digest of the certificate: the pod template carries it, so a
    /// new certificate restarts the instance, which reads it at start.
    pub fn digest(&self) -> String {
        short_digest(self.cert_pem.as_bytes())
    }
}

/// The first 8 bytes of the SHA-256 of `bytes`, in hex: what a pod template
/// annotation carries so that a change of what it stands for restarts the pod.
pub fn short_digest(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};

    fn verify(tls: &InstanceTls, ca_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        let cert = CertificateDer::from_pem_slice(tls.cert_pem.as_bytes()).unwrap();
        verifier
            .verify_server_cert(
                &cert,
                &[],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn the_certificate_is_trusted_under_its_own_ca_for_the_instance_names_only() {
        let names = names("search", "shop", "cluster.local", Some("10.96.0.12"));
        let tls = InstanceTls::issue("search", &names).unwrap();
        for name in [
            "search.shop.svc.cluster.local",
            "search.shop.svc",
            "search",
            "localhost",
            "10.96.0.12",
            "127.0.0.1",
        ] {
            verify(&tls, &tls.ca_pem, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in ["other.shop.svc.cluster.local", "10.96.0.13"] {
            assert!(verify(&tls, &tls.ca_pem, name).is_err(), "{name}");
        }
        // Another instance's CA does not vouch for it.
        let other = InstanceTls::issue("search", &names).unwrap();
        assert!(verify(&tls, &other.ca_pem, "search.shop.svc").is_err());
        assert_ne!(tls.digest(), other.digest());
        assert!(!format!("{tls:?}").contains("PRIVATE"));
        assert!(tls.sound());
    }

    #[test]
    fn an_edited_certificate_key_or_ca_is_not_sound() {
        let names = names("search", "shop", "cluster.local", Some("10.96.0.12"));
        let tls = InstanceTls::issue("search", &names).unwrap();
        let other = InstanceTls::issue("search", &names).unwrap();
        for edited in [
            InstanceTls {
                key_pem: other.key_pem.clone(),
                ..tls.clone()
            },
            InstanceTls {
                cert_pem: other.cert_pem.clone(),
                ..tls.clone()
            },
            InstanceTls {
                ca_pem: other.ca_pem.clone(),
                ..tls.clone()
            },
            InstanceTls {
                cert_pem: "garbage".into(),
                ..tls.clone()
            },
            InstanceTls {
                names: format!("{names},extra.example"),
                ..tls.clone()
            },
        ] {
            assert!(!edited.sound(), "{edited:?}");
        }
    }

    #[test]
    fn a_secret_missing_any_part_holds_no_tls() {
        let tls = InstanceTls::issue("search", "search").unwrap();
        let secret = |entries: &[(&'static str, String)]| Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        let entries = tls.entries();
        assert_eq!(InstanceTls::from_secret(&secret(&entries)), Some(tls));
        assert_eq!(InstanceTls::from_secret(&secret(&entries[1..])), None);
    }
}
