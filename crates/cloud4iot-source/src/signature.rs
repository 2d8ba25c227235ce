//! Commit signature verification: a revision is accepted only when its commit carries an
//! SSH signature (git's `gpg.format=ssh`) by a key listed in an OpenSSH allowed-signers
//! file, for the `git` namespace — what `git verify-commit` checks with
//! `gpg.ssh.allowedSignersFile`, without shelling out to `ssh-keygen`.
//!
//! As in git, the signing key decides; the committer's name and e-mail are not bound to
//! the principal. Allowed-signers lines honour `namespaces="..."` and
//! `valid-after`/`valid-before` (checked against the committer time, read as UTC);
//! `cert-authority` lines are not supported and are rejected when read.

use std::fmt;
use std::path::{Path, PathBuf};

use git2::{ErrorCode, Oid, Repository};
use ssh_key::{HashAlg, PublicKey, SshSig};

/// The SSHSIG namespace git signs commits in.
pub const NAMESPACE: &str = "git";

/// Why a commit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unsigned,
    Gpg,
    X509,
    Malformed(String),
    WrongNamespace(String),
    UnknownKey {
        fingerprint: String,
        file: PathBuf,
    },
    NamespaceNotAllowed {
        fingerprint: String,
        principals: String,
    },
    OutsideValidity {
        fingerprint: String,
        principals: String,
    },
    BadSignature {
        fingerprint: String,
        principals: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unsigned => write!(
                f,
                "the commit is not signed; --verify-signatures accepts only commits with an SSH signature by a key in the allowed signers file"
            ),
            Refusal::Gpg => write!(
                f,
                "the commit carries a GPG (OpenPGP) signature; only SSH signatures (git config gpg.format ssh) are accepted"
            ),
            Refusal::X509 => write!(
                f,
                "the commit carries an X.509 signature; only SSH signatures (git config gpg.format ssh) are accepted"
            ),
            Refusal::Malformed(why) => write!(f, "the commit's signature cannot be read: {why}"),
            Refusal::WrongNamespace(ns) => write!(
                f,
                "the commit is signed for namespace \"{ns}\", not \"{NAMESPACE}\""
            ),
            Refusal::UnknownKey { fingerprint, file } => {
                write!(
                    f,
                    "the commit is signed by key {fingerprint}, which is not in the allowed signers file {}",
                    file.display()
                )
            }
            Refusal::NamespaceNotAllowed {
                fingerprint,
                principals,
            } => {
                write!(
                    f,
                    "the commit is signed by key {fingerprint} of {principals}, which the allowed signers file does not allow for namespace \"{NAMESPACE}\""
                )
            }
            Refusal::OutsideValidity {
                fingerprint,
                principals,
            } => write!(
                f,
                "the commit is signed by key {fingerprint} of {principals}, which the allowed signers file does not allow at the commit's time (valid-after/valid-before)"
            ),
            Refusal::BadSignature {
                fingerprint,
                principals,
            } => write!(
                f,
                "the signature by key {fingerprint} of {principals} does not match the commit (it was altered after signing, or the signature is forged)"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

#[derive(Debug, thiserror::Error)]
pub enum AllowedSignersError {
    #[error("allowed signers file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", file.display())]
    Parse {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

/// One line of an allowed-signers file.
#[derive(Debug, Clone)]
pub struct Signer {
    pub principals: String,
    pub key: PublicKey,
    /// `namespaces="git,file"`; `None` allows every namespace.
    pub namespaces: Option<Vec<String>>,
    pub valid_after: Option<i64>,
    pub valid_before: Option<i64>,
}

/// The keys allowed to sign revisions (OpenSSH `allowed_signers` format:
/// `principals [options] keytype base64-key [comment]`).
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    pub file: PathBuf,
    pub signers: Vec<Signer>,
}

impl AllowedSigners {
    pub fn read(file: &Path) -> Result<Self, AllowedSignersError> {
        let text = std::fs::read_to_string(file).map_err(|source| AllowedSignersError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Self, AllowedSignersError> {
        let mut signers = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| AllowedSignersError::Parse {
                file: file.to_path_buf(),
                line: i + 1,
                message,
            };
            signers.push(parse_line(line).map_err(err)?);
        }
        Ok(AllowedSigners {
            file: file.to_path_buf(),
            signers,
        })
    }
}

/// Splits on whitespace outside double quotes (options may quote values with spaces).
fn fields(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (None, false);
    for (i, c) in line.char_indices() {
        match c {
            '"' => {
                quoted = !quoted;
                start.get_or_insert(i);
            }
            c if c.is_whitespace() && !quoted => {
                if let Some(s) = start.take() {
                    out.push(&line[s..i]);
                }
            }
            _ => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(s) = start {
        out.push(&line[s..]);
    }
    out
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-sha2-") || s.starts_with("sk-")
}

fn parse_line(line: &str) -> Result<Signer, String> {
    let f = fields(line);
    let principals = f.first().ok_or("empty line")?.trim_matches('"').to_owned();
    let (options, key_at) = match f.get(1) {
        Some(t) if is_key_type(t) => (None, 1),
        Some(t) => (Some(*t), 2),
        None => return Err("a principal and a key are expected".to_owned()),
    };
    let (Some(kind), Some(b64)) = (f.get(key_at), f.get(key_at + 1)) else {
        return Err(
            "expected a key type and a base64 key after the principals and options".to_owned(),
        );
    };
    let (mut namespaces, mut valid_after, mut valid_before) = (None, None, None);
    for opt in options.map(split_options).unwrap_or_default() {
        let (name, value) = opt
            .split_once('=')
            .map(|(n, v)| (n, Some(v.trim_matches('"'))))
            .unwrap_or((opt.as_str(), None));
        match (name.to_ascii_lowercase().as_str(), value) {
            ("namespaces", Some(v)) => {
                namespaces = Some(v.split(',').map(|s| s.trim().to_owned()).collect())
            }
            ("valid-after", Some(v)) => valid_after = Some(parse_time(v)?),
            ("valid-before", Some(v)) => valid_before = Some(parse_time(v)?),
            ("cert-authority", _) => {
                return Err("cert-authority lines (SSH certificates) are not supported".to_owned());
            }
            (other, _) => return Err(format!("unknown option {other:?}")),
        }
    }
    let key = PublicKey::from_openssh(&format!("{kind} {b64}"))
        .map_err(|e| format!("invalid {kind} key: {e}"))?;
    Ok(Signer {
        principals,
        key,
        namespaces,
        valid_after,
        valid_before,
    })
}

/// Splits `a="x,y",b` on commas outside quotes.
fn split_options(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]` (ssh-keygen's format), read as UTC.
fn parse_time(v: &str) -> Result<i64, String> {
    let digits = v.strip_suffix(['Z', 'z']).unwrap_or(v);
    let bad = || format!("invalid time {v:?} (expected YYYYMMDD or YYYYMMDDHHMM[SS])");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| {
        digits
            .get(r)
            .map(|s| s.parse::<i32>().unwrap_or(0))
            .unwrap_or(0)
    };
    let dt = jiff::civil::DateTime::new(
        n(0..4) as i16,
        n(4..6) as i8,
        n(6..8) as i8,
        n(8..10) as i8,
        n(10..12) as i8,
        n(12..14) as i8,
        0,
    )
    .map_err(|_| bad())?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_second())
        .map_err(|_| bad())
}

/// Checks the signature of `commit`; returns the signer's principals when accepted.
pub fn verify_commit(
    repo: &Repository,
    commit: Oid,
    signers: &AllowedSigners,
) -> Result<String, Refusal> {
    let (sig, data) = match repo.extract_signature(&commit, None) {
        Ok(pair) => pair,
        Err(e) if e.code() == ErrorCode::NotFound => return Err(Refusal::Unsigned),
        Err(e) => return Err(Refusal::Malformed(e.message().to_owned())),
    };
    let time = repo
        .find_commit(commit)
        .map(|c| c.committer().when().seconds())
        .map_err(|e| Refusal::Malformed(e.message().to_owned()))?;
    verify(&sig, &data, time, signers)
}

/// Checks an armored signature over `data` (the commit without its `gpgsig` header)
/// made at `time` (seconds since the epoch).
pub fn verify(
    armored: &[u8],
    data: &[u8],
    time: i64,
    signers: &AllowedSigners,
) -> Result<String, Refusal> {
    let text = String::from_utf8_lossy(armored);
    let text = text.trim_start();
    if text.starts_with("-----BEGIN PGP SIGNATURE-----") {
        return Err(Refusal::Gpg);
    }
    if text.starts_with("-----BEGIN SIGNED MESSAGE-----")
        || text.starts_with("-----BEGIN PKCS7-----")
    {
        return Err(Refusal::X509);
    }
    if !text.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return Err(Refusal::Malformed(
            "not an SSH, GPG or X.509 signature".to_owned(),
        ));
    }
    let sig = SshSig::from_pem(text.trim_end()).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if sig.namespace() != NAMESPACE {
        return Err(Refusal::WrongNamespace(sig.namespace().to_owned()));
    }
    let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
    let mut with_key = signers
        .signers
        .iter()
        .filter(|s| s.key.key_data() == sig.public_key())
        .peekable();
    let Some(first) = with_key.peek().cloned() else {
        return Err(Refusal::UnknownKey {
            fingerprint,
            file: signers.file.clone(),
        });
    };
    let in_namespace = |s: &&Signer| {
        s.namespaces
            .as_ref()
            .is_none_or(|ns| ns.iter().any(|n| n == NAMESPACE))
    };
    // Both bounds inclusive, as ssh-keygen (sshsig.c) checks them: git verify-commit
    // accepts a commit made exactly at valid-before.
    let in_time = |s: &&Signer| {
        s.valid_after.is_none_or(|t| time >= t) && s.valid_before.is_none_or(|t| time <= t)
    };
    let candidates: Vec<&Signer> = with_key.collect();
    let Some(signer) = candidates
        .iter()
        .copied()
        .find(|s| in_namespace(s) && in_time(s))
    else {
        let principals = first.principals.clone();
        return Err(if candidates.iter().any(in_namespace) {
            Refusal::OutsideValidity {
                fingerprint,
                principals,
            }
        } else {
            Refusal::NamespaceNotAllowed {
                fingerprint,
                principals,
            }
        });
    };
    signer
        .key
        .verify(NAMESPACE, data, &sig)
        .map_err(|_| Refusal::BadSignature {
            fingerprint,
            principals: signer.principals.clone(),
        })?;
    Ok(signer.principals.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::{Algorithm, LineEnding, PrivateKey, rand_core::OsRng};

    fn key() -> PrivateKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap()
    }

    fn signers(lines: &str) -> AllowedSigners {
        AllowedSigners::parse(Path::new("allowed_signers"), lines).unwrap()
    }

    fn sign(k: &PrivateKey, ns: &str, data: &[u8]) -> String {
        k.sign(ns, HashAlg::Sha512, data)
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap()
    }

    #[test]
    fn accepts_a_listed_key_and_refuses_the_rest() {
        let (good, other) = (key(), key());
        let allowed = signers(&format!(
            "# team\nalice@example.org namespaces=\"git\" {}\n",
            good.public_key().to_openssh().unwrap()
        ));
        let data = b"tree 123\n\nmessage\n";
        assert_eq!(
            verify(sign(&good, "git", data).as_bytes(), data, 0, &allowed).unwrap(),
            "alice@example.org"
        );
        assert!(matches!(
            verify(
                sign(&good, "git", data).as_bytes(),
                b"tampered",
                0,
                &allowed
            ),
            Err(Refusal::BadSignature { .. })
        ));
        assert!(matches!(
            verify(sign(&other, "git", data).as_bytes(), data, 0, &allowed),
            Err(Refusal::UnknownKey { .. })
        ));
        assert_eq!(
            verify(sign(&good, "file", data).as_bytes(), data, 0, &allowed),
            Err(Refusal::WrongNamespace("file".into()))
        );
        let pgp = b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n";
        assert_eq!(verify(pgp, data, 0, &allowed), Err(Refusal::Gpg));
    }

    #[test]
    fn namespaces_and_validity_options_are_enforced() {
        let k = key();
        let pk = k.public_key().to_openssh().unwrap();
        let data = b"commit";
        let sig = sign(&k, "git", data);
        let files_only = signers(&format!("a@x namespaces=\"file\" {pk}"));
        assert!(matches!(
            verify(sig.as_bytes(), data, 0, &files_only),
            Err(Refusal::NamespaceNotAllowed { .. })
        ));
        // 2024-01-01T00:00:00Z = 1704067200
        let from_2024 = signers(&format!(
            "a@x,b@x valid-after=\"20240101\",namespaces=\"git,file\" {pk} laptop"
        ));
        assert!(matches!(
            verify(sig.as_bytes(), data, 1_704_067_199, &from_2024),
            Err(Refusal::OutsideValidity { .. })
        ));
        assert_eq!(
            verify(sig.as_bytes(), data, 1_704_067_200, &from_2024).unwrap(),
            "a@x,b@x"
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let err = AllowedSigners::parse(
            Path::new("signers"),
            "\n# c\nalice ssh-ed25519 AAAAnotbase64!\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("signers:3: invalid ssh-ed25519 key"),
            "{err}"
        );
        let err = AllowedSigners::parse(
            Path::new("signers"),
            "alice cert-authority ssh-ed25519 AAAA\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("cert-authority"), "{err}");
    }
}
