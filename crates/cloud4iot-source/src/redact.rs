//! One redaction for every line that may show a repository URL: the URL's user
//! information is a credential (`https://TOKEN@host/...`, `https://user:password@host/...`)
//! and never leaves the process.

/// `text` with the user information of every `scheme://user:password@host` in it replaced
/// by `***`. Works on a URL alone and on any message that quotes one (libgit2's errors do).
/// For ssh (`ssh://git@host/...`) the login name is kept, since ssh carries no password in
/// a URL and the name is what one needs to debug authentication; a password part is masked.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at);
        let after = &after[3..];
        let scheme_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |i| i + 1);
        let scheme = &before[scheme_start..];
        out.push_str(before);
        out.push_str("://");
        let authority_end = after
            .find(|c: char| "/?#\"'<>`()[]{}|\\".contains(c) || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) if !scheme.is_empty() => {
                let ssh = scheme.eq_ignore_ascii_case("ssh")
                    || scheme.eq_ignore_ascii_case("git+ssh")
                    || scheme.eq_ignore_ascii_case("ssh+git");
                match userinfo.split_once(':') {
                    _ if !ssh => out.push_str("***"),
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push('@');
                out.push_str(host);
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn user_information_is_never_shown() {
        let cases = [
            (
                "https://ci:s3cret@git.example.org/a/b.git",
                "https://***@git.example.org/a/b.git",
            ),
            // A token used as the user name is a credential too.
            (
                "https://ghp_TOKEN123@git.example.org/a.git",
                "https://***@git.example.org/a.git",
            ),
            ("http://u:p@h:8080", "http://***@h:8080"),
            ("ssh://git@host:22/x@y", "ssh://git@host:22/x@y"),
            ("ssh://git:pw@host/x", "ssh://git:***@host/x"),
            ("file:///tmp/r", "file:///tmp/r"),
            ("git@host:org/repo.git", "git@host:org/repo.git"),
            (
                "cannot reach https://tok@h/x: failed; retry https://a:b@h2/y.",
                "cannot reach https://***@h/x: failed; retry https://***@h2/y.",
            ),
            ("no url here", "no url here"),
            ("://weird@x", "://weird@x"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }
}
