//! The one domain rule: a tenant's `domains` entries, and whether a host belongs to one.
//!
//! [`DomainPattern`] parses an entry (`example.com`, `*.example.com`, `localhost`,
//! `127.0.0.1`, `::1`), normalizes it, and matches hosts against it. The configuration checks
//! entries with it (and finds duplicates by its equality), the tenant directory indexes
//! tenants by it, and [`crate::origin`] normalizes the calling host with the same
//! [`normalize_host`], so what is refused, what collides and what matches never disagree.
//!
//! Host normalization: lowercase, the port dropped, one trailing dot dropped, a leading `www.`
//! removed when at least two labels remain (`www.example.com` and `example.com` are the same
//! site), international names in their ASCII (punycode) form as the `url` crate produces it,
//! and IP addresses compared as addresses. Matching is label-exact, so look-alikes such as
//! `example.com.evil.net` or `evilexample.com` never match. Pure: no I/O.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use url::Host;

/// Drops trailing dots and a leading `www.` (when at least two labels
/// remain). Case is left alone: callers compare ASCII case-insensitively.
pub(crate) fn normalize_host(host: &str) -> &str {
    let host = host.trim_end_matches('.');
    match host.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case("www.") && host[4..].contains('.') => {
            &host[4..]
        }
        _ => host,
    }
}

/// Parses an IP host as [`crate::origin::Site::host`] gives it (`127.0.0.1`, `[::1]`).
fn parse_ip_host(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse().ok(),
    }
}

/// One entry of a tenant's domain list.
///
/// - `example.com` (any case, an optional trailing dot) matches the host
///   `example.com` only; `www.example.com` is the same entry, since hosts
///   and entries both lose a leading `www.`.
/// - `*.example.com` matches every subdomain of `example.com` at any depth
///   (`shop.example.com`, `a.b.example.com`) but NOT `example.com` itself,
///   nor `www.example.com`, which normalizes to it: list the apex as well
///   to allow it. The part after `*.` needs at least two labels (`*.com`
///   is refused); public suffixes such as `*.co.uk` cannot be detected.
/// - `localhost`, an IPv4 address or an IPv6 address (`::1` or `[::1]`)
///   match that host exactly; ports are never part of an entry.
/// - International names may be written in Unicode or punycode; they are
///   compared in punycode.
///
/// Two entries are equal (and hash alike) when they are the same site after normalization:
/// `Example.com.`, `www.example.com` and `example.com`; `*.Example.com.` and `*.example.com`;
/// `::1` and `[::1]`. That equality is what the configuration calls a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainPattern {
    kind: PatternKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatternKind {
    /// A normalized host name.
    Exact(String),
    /// The normalized parent domain, without the leading `*.`.
    Subdomains(String),
    Ip(IpAddr),
}

impl DomainPattern {
    /// Parses one domain-list entry. The error says what is wrong and what
    /// to write instead, as a phrase meant to follow the entry, e.g.
    /// `"a.com:80" is not a bare host name: it includes a port (...); write "a.com"`.
    pub fn parse(s: &str) -> Result<DomainPattern, String> {
        if s.is_empty() {
            return Err("is empty: write a host name such as \"example.com\"".to_owned());
        }
        if s.chars().any(char::is_whitespace) {
            return Err(String::from(
                "contains whitespace: write the bare host name, such as \"example.com\"",
            ));
        }
        if let Some(ip) = parse_ip_host(s) {
            return Ok(Self::from_kind(PatternKind::Ip(ip)));
        }
        if s == "*" || s == "*." {
            return Err(String::from(
                "would allow every website: list the sites, \
                 such as \"example.com\" and \"*.example.com\"",
            ));
        }
        let hint = bare_host_hint(s);
        if s.contains("://") {
            return Err(format!(
                "is not a bare host name: it includes a scheme; write just the host, \"{hint}\""
            ));
        }
        if s.contains(['/', '?', '#']) {
            return Err(format!(
                "is not a bare host name: it includes a path; write just the host, \"{hint}\""
            ));
        }
        if s.contains('@') {
            return Err(format!(
                "is not a bare host name: it includes user info; write just the host, \"{hint}\""
            ));
        }
        if s.contains(':') {
            return Err(format!(
                "is not a bare host name: it includes a port (every port of a listed host is \
                 allowed); write \"{hint}\""
            ));
        }
        let (wildcard, name) = match s.strip_prefix("*.") {
            Some(parent) => (true, parent),
            None => (false, s),
        };
        if name.contains('*') {
            return Err(String::from(
                "has a misplaced wildcard: \"*.\" is only allowed at the start, \
                 as in \"*.example.com\"",
            ));
        }
        let host = Host::parse(name).map_err(|e| format!("is not a valid host name: {e}"))?;
        let domain = match host {
            Host::Domain(domain) => domain,
            Host::Ipv4(_) | Host::Ipv6(_) if wildcard => {
                return Err(String::from(
                    "puts a wildcard on an IP address: list the address itself",
                ));
            }
            Host::Ipv4(_) | Host::Ipv6(_) => {
                return Err(String::from(
                    "is not a valid IP address: write it as four decimal numbers, \
                     such as \"127.0.0.1\"",
                ));
            }
        };
        let domain = domain.strip_suffix('.').unwrap_or(&domain);
        if domain.is_empty() || domain.split('.').any(str::is_empty) {
            return Err(String::from(
                "has an empty label (\"..\" or a leading dot): \
                 write a name such as \"example.com\"",
            ));
        }
        if wildcard {
            if !domain.contains('.') {
                return Err(format!(
                    "would allow every site under \"{domain}\": put the wildcard over \
                     a registered domain, such as \"*.example.{domain}\""
                ));
            }
            return Ok(Self::from_kind(PatternKind::Subdomains(domain.to_owned())));
        }
        Ok(Self::from_kind(PatternKind::Exact(
            normalize_host(domain).to_owned(),
        )))
    }

    fn from_kind(kind: PatternKind) -> Self {
        DomainPattern { kind }
    }

    /// Whether this entry covers subdomains (`*.example.com`) rather than one host. An entry
    /// that is not a wildcard matches exactly the [`crate::origin::Site::host`] equal to its `Display` form.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.kind, PatternKind::Subdomains(_))
    }

    /// Whether `host` (as in [`crate::origin::Site::host`]) belongs to this entry. The
    /// host is normalized again (case, trailing dot, `www.`), so a raw host
    /// name without a port works too.
    pub fn matches(&self, host: &str) -> bool {
        match &self.kind {
            PatternKind::Ip(ip) => parse_ip_host(host) == Some(*ip),
            PatternKind::Exact(name) => normalize_host(host).eq_ignore_ascii_case(name),
            PatternKind::Subdomains(parent) => {
                // A parent domain always ends in a letter label, so no IP
                // address (ending in a digit or `]`) can match here.
                let host = normalize_host(host);
                let Some(split) = host.len().checked_sub(parent.len() + 1) else {
                    return false;
                };
                split > 0
                    && host.as_bytes()[split] == b'.'
                    && host
                        .get(split + 1..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(parent))
            }
        }
    }
}

/// The normalized entry: `example.com`, `*.example.com`, `127.0.0.1`, `[::1]`.
impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            PatternKind::Exact(name) => f.write_str(name),
            PatternKind::Subdomains(parent) => write!(f, "*.{parent}"),
            PatternKind::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            // As browsers and `url` write it (an IPv4-mapped address stays hexadecimal), so
            // that the entry equals `Site::host`.
            PatternKind::Ip(IpAddr::V6(ip)) => write!(f, "{}", url::Host::<String>::Ipv6(*ip)),
        }
    }
}

impl FromStr for DomainPattern {
    type Err = String;

    /// [`DomainPattern::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DomainPattern::parse(s)
    }
}

/// Guesses the bare host inside a URL-like entry, for error messages.
fn bare_host_hint(s: &str) -> String {
    let rest = s.split_once("://").map_or(s, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.find(']') {
        Some(end) if host_port.starts_with('[') => &host_port[..=end],
        _ => host_port.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        "example.com".to_owned()
    } else {
        host.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn patterns_are_normalized() {
        for (entry, normalized) in [
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("www.example.com", "example.com"),
            ("WWW.Example.com.", "example.com"),
            ("www.com", "www.com"),
            ("*.Example.com", "*.example.com"),
            ("*.example.com.", "*.example.com"),
            ("localhost", "localhost"),
            ("127.0.0.1", "127.0.0.1"),
            ("::1", "[::1]"),
            ("[::1]", "[::1]"),
            ("bücher.example", "xn--bcher-kva.example"),
        ] {
            assert_eq!(pattern(entry).to_string(), normalized, "{entry}");
        }
        assert_eq!(pattern("www.example.com"), pattern("example.com"));
    }

    #[test]
    fn bad_patterns_are_refused_with_advice() {
        for (entry, says) in [
            ("", "is empty"),
            (" example.com", "whitespace"),
            ("exa mple.com", "whitespace"),
            ("https://a.com", "write just the host, \"a.com\""),
            ("https://A.com:8443/path", "\"a.com\""),
            ("a.com/x", "includes a path"),
            ("a.com:80", "includes a port"),
            ("a.com:80", "write \"a.com\""),
            ("user@a.com", "includes user info"),
            ("*", "every website"),
            ("*.com", "every site under \"com\""),
            ("*.localhost", "every site under"),
            ("a.*.com", "misplaced wildcard"),
            ("*example.com", "misplaced wildcard"),
            ("ex*ample.com", "misplaced wildcard"),
            ("*.*.example.com", "misplaced wildcard"),
            ("*.127.0.0.1", "wildcard on an IP"),
            ("1.2.3", "not a valid IP address"),
            ("a..com", "empty label"),
            (".example.com", "empty label"),
            ("exa<mple.com", "not a valid host name"),
        ] {
            match DomainPattern::parse(entry) {
                Ok(p) => panic!("{entry:?} was accepted as {p}"),
                Err(message) => assert!(message.contains(says), "{entry:?}: {message}"),
            }
        }
    }

    #[test]
    fn entries_of_one_site_are_equal_and_hash_alike() {
        use std::collections::HashSet;
        for same in [
            &[
                "example.com",
                "Example.COM.",
                "www.example.com",
                "WWW.Example.com.",
            ][..],
            &["*.example.com", "*.Example.com.", "*.EXAMPLE.COM"],
            &["bücher.example", "BÜCHER.example", "xn--bcher-kva.example"],
            &["::1", "[::1]", "0:0:0:0:0:0:0:1"],
            &["::ffff:1.2.3.4", "::ffff:102:304", "[::FFFF:1.2.3.4]"],
        ] {
            let set: HashSet<DomainPattern> = same.iter().map(|e| pattern(e)).collect();
            assert_eq!(set.len(), 1, "{same:?} should be one site: {set:?}");
        }
        for (a, b) in [
            ("example.com", "*.example.com"),
            ("*.example.com", "*.www.example.com"),
            ("www.com", "com.com"),
            ("127.0.0.1", "::ffff:127.0.0.1"),
            ("localhost", "127.0.0.1"),
        ] {
            assert_ne!(pattern(a), pattern(b), "{a} and {b} are different sites");
        }
        assert_eq!(
            "WWW.Example.com".parse::<DomainPattern>(),
            Ok(pattern("example.com"))
        );
    }
}
