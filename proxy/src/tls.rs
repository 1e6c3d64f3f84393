//! TLS termination: certificates selected by SNI (exact, then one-label wildcard, then the default).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::ClientHello;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::model::Certificate;
use crate::model::RoutingTable;

/// Why a certificate or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("tls.crt is not valid PEM: {0}")]
    CertPem(String),
    #[error("tls.key is not a valid PEM private key: {0}")]
    KeyPem(String),
    #[error("unsupported private key type: {0}")]
    KeyType(#[source] rustls::Error),
    #[error("tls.key does not match the certificate in tls.crt")]
    Mismatch,
    #[error("could not generate the default certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider used everywhere: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses and checks a PEM chain and key.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CertPem(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::KeyPem(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(TlsError::KeyType)?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch),
        // Unknown: the key type cannot tell; accept, as nginx would.
        Err(_) => Ok(ck),
    }
}

/// A self-signed certificate for when no default is configured (like ingress-nginx's
/// "Kubernetes Ingress Controller Fake Certificate").
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = rcgen::generate_simple_self_signed(names)?;
    Ok((cert.cert.pem(), cert.signing_key.serialize_pem()))
}

/// Certificates by SNI name, built from a table.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// By certificate id, with the PEM it came from, so unchanged ones are not parsed again.
    loaded: HashMap<String, (Certificate, Arc<CertifiedKey>)>,
}

impl CertStore {
    /// Builds the store for `table`, reusing parsed keys from `previous`. A certificate that
    /// does not parse is skipped with a warning (the compiler rejects those earlier), and its
    /// hosts get the default certificate.
    pub fn build(table: &RoutingTable, previous: &CertStore) -> CertStore {
        let mut store = CertStore::default();
        for (id, pem) in &table.certificates {
            let key = match previous.loaded.get(id) {
                Some((old, key)) if old == pem => key.clone(),
                _ => match certified_key(&pem.cert_pem, &pem.key_pem) {
                    Ok(k) => Arc::new(k),
                    Err(e) => {
                        tracing::warn!(certificate = %id, error = %e, "certificate skipped");
                        continue;
                    }
                },
            };
            store.loaded.insert(id.clone(), (pem.clone(), key));
        }
        for (name, id) in &table.sni {
            let Some((_, key)) = store.loaded.get(id) else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(suffix) => store.wildcard.insert(suffix.to_string(), key.clone()),
                None => store.exact.insert(name, key.clone()),
            };
        }
        store
    }

    /// The certificate for an SNI name, if one is configured.
    pub fn find(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&sni) {
            return Some(k.clone());
        }
        let (label, suffix) = sni.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(suffix).cloned()
    }
}

/// The rustls resolver: the current store, or the default certificate.
#[derive(Debug)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    pub fn new(default: CertifiedKey) -> SniResolver {
        SniResolver {
            store: ArcSwap::from_pointee(CertStore::default()),
            default: Arc::new(default),
        }
    }

    /// Swaps in a new store; handshakes already under way keep the old one.
    pub fn install(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }

    pub fn store(&self) -> Arc<CertStore> {
        self.store.load_full()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = hello.server_name().and_then(|n| self.store.load().find(n));
        Some(found.unwrap_or_else(|| self.default.clone()))
    }
}

/// The server-side rustls config: TLS 1.2 and 1.3, ALPN h2 then http/1.1.
pub fn server_config(resolver: Arc<SniResolver>) -> Result<rustls::ServerConfig, TlsError> {
    config_for(resolver, &[&rustls::version::TLS12, &rustls::version::TLS13])
}

fn config_for(
    resolver: Arc<SniResolver>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// One acceptor per `ssl-protocols` choice, sharing the certificate resolver, so the choice
/// can change with the table without rebuilding listeners.
#[derive(Clone)]
pub struct TlsAcceptors {
    both: tokio_rustls::TlsAcceptor,
    tls12: tokio_rustls::TlsAcceptor,
    tls13: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptors")
    }
}

impl TlsAcceptors {
    pub fn new(resolver: Arc<SniResolver>) -> Result<TlsAcceptors, TlsError> {
        let make = |v: &[&'static rustls::SupportedProtocolVersion]| {
            config_for(resolver.clone(), v).map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)))
        };
        Ok(TlsAcceptors {
            both: make(&[&rustls::version::TLS12, &rustls::version::TLS13])?,
            tls12: make(&[&rustls::version::TLS12])?,
            tls13: make(&[&rustls::version::TLS13])?,
        })
    }

    /// The acceptor offering `versions` (both when the choice is empty).
    pub fn for_versions(&self, versions: crate::model::TlsVersions) -> &tokio_rustls::TlsAcceptor {
        match (versions.tls12, versions.tls13) {
            (true, false) => &self.tls12,
            (false, true) => &self.tls13,
            _ => &self.both,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(id: &str, pem: (String, String), names: &[&str]) -> RoutingTable {
        let mut t = RoutingTable::default();
        t.certificates.insert(
            id.into(),
            Certificate {
                cert_pem: pem.0,
                key_pem: pem.1,
            },
        );
        for n in names {
            t.sni.insert((*n).into(), id.into());
        }
        t
    }

    #[test]
    fn exact_then_one_label_wildcard() {
        let t = table_with(
            "ns/wild",
            self_signed(&["*.foo.com"]).unwrap(),
            &["*.foo.com", "exact.com"],
        );
        let s = CertStore::build(&t, &CertStore::default());
        assert!(s.find("a.foo.com").is_some());
        assert!(s.find("A.FOO.COM.").is_some());
        assert!(s.find("exact.com").is_some());
        assert!(s.find("foo.com").is_none());
        assert!(s.find("a.b.foo.com").is_none());
    }

    #[test]
    fn unchanged_certificates_are_not_parsed_again() {
        let t = table_with("ns/c", self_signed(&["a.com"]).unwrap(), &["a.com"]);
        let s1 = CertStore::build(&t, &CertStore::default());
        let s2 = CertStore::build(&t, &s1);
        assert!(Arc::ptr_eq(&s1.find("a.com").unwrap(), &s2.find("a.com").unwrap()));
    }

    #[test]
    fn bad_pem_and_mismatched_keys_are_errors() {
        let (c1, k1) = self_signed(&["a.com"]).unwrap();
        let (_, k2) = self_signed(&["b.com"]).unwrap();
        assert!(certified_key(&c1, &k1).is_ok());
        assert!(matches!(certified_key(&c1, &k2), Err(TlsError::Mismatch)));
        assert!(matches!(certified_key("garbage", &k1), Err(TlsError::NoCertificate)));
        assert!(matches!(certified_key(&c1, "garbage"), Err(TlsError::KeyPem(_))));
        let truncated = &c1[..c1.len() / 2];
        assert!(certified_key(truncated, &k1).is_err());
    }
}
