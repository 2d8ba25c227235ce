//! Keys, certificates and credentials of one test control plane, written into its
//! directory: a CA, the API server's serving certificate (for 127.0.0.1 and
//! localhost), the service-account signing key, and a static token per identity.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// ECDSA P-256 service-account signing key (PKCS#8 PEM) and its public key:
    /// kube-apiserver's `--service-account-key-file` takes public keys only.
    pub service_account_key: PathBuf,
    pub service_account_public_key: PathBuf,
    pub token_file: PathBuf,
    pub admin_token: String,
    pub scheduler_token: String,
    pub controller_manager_token: String,
}

impl Pki {
    pub fn write(dir: &Path) -> Pki {
        let pki = dir.join("pki");
        fs::create_dir_all(&pki).expect("create pki directory");

        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "cloud4iot-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let issuer = Issuer::new(ca_params, &ca_key);

        let serving_key = KeyPair::generate().expect("generate serving key");
        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])
        .expect("serving params");
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = params
            .signed_by(&serving_key, &issuer)
            .expect("sign serving certificate");

        let sa_key = KeyPair::generate().expect("generate service-account key");

        let out = Pki {
            ca_cert: pki.join("ca.crt"),
            ca_key: pki.join("ca.key"),
            serving_cert: pki.join("apiserver.crt"),
            serving_key: pki.join("apiserver.key"),
            service_account_key: pki.join("sa.key"),
            service_account_public_key: pki.join("sa.pub"),
            token_file: pki.join("tokens.csv"),
            admin_token: random_token(),
            scheduler_token: random_token(),
            controller_manager_token: random_token(),
        };
        write(&out.ca_cert, &ca_cert.pem());
        write(&out.ca_key, &ca_key.serialize_pem());
        write(&out.serving_cert, &serving_cert.pem());
        write(&out.serving_key, &serving_key.serialize_pem());
        write(&out.service_account_key, &sa_key.serialize_pem());
        write(&out.service_account_public_key, &sa_key.public_key_pem());
        // token,user,uid,"group,..." — every identity is a cluster admin: this is a
        // throwaway control plane, and the tests exercise cloud4iot, not RBAC roles.
        write(
            &out.token_file,
            &format!(
                "{},admin,admin,\"system:masters\"\n\
                 {},system:kube-scheduler,kube-scheduler,\"system:masters\"\n\
                 {},system:kube-controller-manager,kube-controller-manager,\"system:masters\"\n",
                out.admin_token, out.scheduler_token, out.controller_manager_token
            ),
        );
        out
    }
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// 128 random bits as hex: enough for a bearer token on a loopback test server.
fn random_token() -> String {
    let mut token = String::new();
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
        token.push_str(&format!("{:016x}", h.finish()));
    }
    token
}
