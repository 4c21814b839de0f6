//! Certificates for test servers, made with `rcgen` (ECDSA P-256): a CA and
//! the server and client certificates it signs, as PEM texts and files. The
//! local kube-apiserver, the Kubernetes node and the TLS tests of etcd all
//! take theirs from here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority for one test server or cluster.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of test output.
        f.debug_struct("Issued").field("cert", &self.cert).finish_non_exhaustive()
    }
}

impl Issued {
    /// Writes `<name>.crt` and `<name>.key` (mode 0600) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        Ok((write(dir, &format!("{name}.crt"), &self.cert)?, write(dir, &format!("{name}.key"), &self.key)?))
    }
}

impl Ca {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        Ok(Self { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)? })
    }

    /// The CA's certificate and key (a server that signs certificates itself needs the key).
    pub fn own(&self) -> Issued {
        Issued { cert: self.issuer.pem(), key: self.issuer.key().serialize_pem() }
    }

    /// A server certificate for `names` (IP addresses and DNS names).
    pub fn server(&self, common_name: &str, names: &[&str]) -> Result<Issued, rcgen::Error> {
        self.issue(common_name, None, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for user `common_name` in group `organization`.
    pub fn client(&self, common_name: &str, organization: Option<&str>) -> Result<Issued, rcgen::Error> {
        self.issue(common_name, organization, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        common_name: &str,
        organization: Option<&str>,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        if let Some(organization) = organization {
            params.distinguished_name.push(DnType::OrganizationName, organization);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert: cert.pem(), key: key.serialize_pem() })
    }
}

/// A service-account signing key pair (`sa.key`, `sa.pub` in PEM).
pub struct ServiceAccountKey {
    /// The private key, for kube-apiserver's signing and the controller-manager.
    pub private: String,
    /// The public key, for kube-apiserver's verification.
    pub public: String,
}

impl ServiceAccountKey {
    /// A new key pair.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        Ok(Self { private: key.serialize_pem(), public: key.public_key_pem() })
    }

    /// Writes `sa.key` (mode 0600) and `sa.pub` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        Ok((write(dir, "sa.key", &self.private)?, write(dir, "sa.pub", &self.public)?))
    }
}

/// Writes `text` to `dir/name` (creating `dir`); a `.key` file gets mode 0600.
pub fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    if name.ends_with(".key") {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_servers_and_clients_and_keys_are_private() {
        let ca = Ca::new("test-ca").unwrap();
        let server = ca.server("kube-apiserver", &["127.0.0.1", "localhost"]).unwrap();
        let client = ca.client("registry-admin", Some("system:masters")).unwrap();
        assert!(server.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(client.key.contains("PRIVATE KEY"));
        assert!(!format!("{client:?}").contains("PRIVATE KEY"), "Debug shows no key");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = server.write(dir.path(), "apiserver").unwrap();
        assert_eq!(std::fs::read_to_string(cert).unwrap(), server.cert);
        assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(ca.own().cert.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
