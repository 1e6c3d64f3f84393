//! Mutual TLS between members: the cluster CA, node certificates (`raftgate cert`), and tonic's TLS settings.
//!
//! Every member presents a certificate signed by the cluster CA and accepts only peers that do
//! the same. Node certificates carry [`PEER_NAME`] as a DNS name, and clients check the server
//! for that name, so members can be addressed by IP or by any host name.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::Error;

/// The DNS name every node certificate carries and every client checks.
pub const PEER_NAME: &str = "raftgate-peer";

/// PEM material of one member: the cluster CA, and this member's certificate and key.
#[derive(Clone)]
pub struct PeerTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Read the three PEM files, checking that each holds what it should.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, Error> {
        let read = |p: &Path, what: &str, marker: &str| -> Result<Vec<u8>, Error> {
            let bytes = std::fs::read(p).map_err(|e| Error::Tls(format!("read {what} {}: {e}", p.display())))?;
            if !String::from_utf8_lossy(&bytes).contains(marker) {
                return Err(Error::Tls(format!("{what} {} holds no PEM {marker}", p.display())));
            }
            Ok(bytes)
        };
        Ok(Self {
            ca_pem: read(ca, "CA certificate", "CERTIFICATE")?,
            cert_pem: read(cert, "certificate", "CERTIFICATE")?,
            key_pem: read(key, "private key", "PRIVATE KEY")?,
        })
    }

    pub(crate) fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    pub(crate) fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(PEER_NAME)
    }
}

/// A generated certificate and its key, in PEM.
#[derive(Debug)]
pub struct Generated {
    pub cert_pem: String,
    pub key_pem: String,
}

fn cert_err(e: rcgen::Error) -> Error {
    Error::Cert(e.to_string())
}

fn ca_params(cluster: &str) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("raftgate cluster CA ({cluster})"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    Ok(params)
}

/// A new cluster CA (ECDSA P-256, valid until 2035) named after `cluster`.
pub fn generate_ca(cluster: &str) -> Result<Generated, Error> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = ca_params(cluster)?.self_signed(&key).map_err(cert_err)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A node certificate signed by the CA that [`generate_ca`] made for `cluster` (its key is
/// `ca_key_pem`), usable as both TLS server and client. `hosts` are extra names or IP
/// addresses to put in the certificate besides [`PEER_NAME`].
pub fn generate_node(cluster: &str, ca_key_pem: &str, name: &str, hosts: &[String]) -> Result<Generated, Error> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(cert_err)?;
    let issuer = Issuer::new(ca_params(cluster)?, ca_key);
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(vec![PEER_NAME.to_string()]).map_err(cert_err)?;
    for host in hosts {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into().map_err(cert_err)?),
        };
        params.subject_alt_names.push(san);
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
