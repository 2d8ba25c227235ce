//! Git webhooks: GitHub `X-Hub-Signature-256: sha256=<hex>` (HMAC-SHA256 of the raw body),
//! GitLab `X-Gitlab-Token: <secret>`. Both compared in constant time. A valid hook only
//! wakes the git poller; its body is never trusted for state.
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A push (or ping) from a known provider with a valid secret: trigger a fetch.
    Fetch,
    /// Valid, but nothing to do (`ping`, another event type).
    Ignore,
    /// 401: missing or wrong signature/token.
    Unauthorized,
}

pub fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Verdict {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(sig) = header("x-hub-signature-256") {
        let Some(hex) = sig.strip_prefix("sha256=") else {
            return Verdict::Unauthorized;
        };
        let Some(given) = decode_hex(hex) else {
            return Verdict::Unauthorized;
        };
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(body);
        // verify_slice is constant time (subtle inside).
        if mac.verify_slice(&given).is_err() {
            return Verdict::Unauthorized;
        }
        return match header("x-github-event") {
            Some("push") => Verdict::Fetch,
            _ => Verdict::Ignore,
        };
    }
    if let Some(token) = header("x-gitlab-token") {
        // Compare digests so that neither the length nor the content leaks through timing.
        let a = Sha256::digest(token.as_bytes());
        let b = Sha256::digest(secret);
        if !bool::from(a.ct_eq(&b)) {
            return Verdict::Unauthorized;
        }
        return match header("x-gitlab-event") {
            Some("Push Hook") | Some("Tag Push Hook") => Verdict::Fetch,
            _ => Verdict::Ignore,
        };
    }
    Verdict::Unauthorized
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_example() {
        // The example in GitHub's "Validating webhook deliveries" documentation.
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
                .parse()
                .unwrap(),
        );
        h.insert("x-github-event", "push".parse().unwrap());
        assert_eq!(
            verify(b"It's a Secret to Everybody", &h, b"Hello, World!"),
            Verdict::Fetch
        );
        assert_eq!(
            verify(b"wrong", &h, b"Hello, World!"),
            Verdict::Unauthorized
        );
    }

    #[test]
    fn gitlab_token() {
        let mut h = HeaderMap::new();
        h.insert("x-gitlab-token", "s3cret".parse().unwrap());
        h.insert("x-gitlab-event", "Push Hook".parse().unwrap());
        assert_eq!(verify(b"s3cret", &h, b"{}"), Verdict::Fetch);
        assert_eq!(verify(b"other", &h, b"{}"), Verdict::Unauthorized);
    }
}
