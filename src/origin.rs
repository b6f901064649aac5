//! Which website is calling, and whether a tenant's domain list allows it.
//!
//! [`calling_site`] reads the browser's `Origin` header (or, when a request
//! has none, its `Referer`) and returns the calling [`Site`]: the origin to
//! echo in `Access-Control-Allow-Origin` and a normalized host to match.
//! Values a browser would never send for an ordinary web page (`null`,
//! non-http(s) schemes, user info such as `https://example.com@evil.net`,
//! an `Origin` with a path) are rejected with an [`OriginError`], and an
//! invalid `Origin` never falls back to the `Referer`.
//!
//! The host is normalized by the one domain rule ([`crate::domain`]): lowercase,
//! no port, no trailing dot, no leading `www.`, punycode, IP addresses in their
//! URL form, so that it compares with a tenant's [`DomainPattern`]s (re-exported
//! here). URLs are parsed by the `url` crate (WHATWG rules, the same a browser
//! applies).

use std::cell::RefCell;
use std::fmt;

use url::{Host, Url};

use crate::domain::normalize_host;
pub use crate::domain::DomainPattern;

/// The website a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The serialized origin `scheme://host[:port]` to echo in
    /// `Access-Control-Allow-Origin`: the `Origin` header as sent (without
    /// surrounding whitespace), or the origin of the `Referer` URL.
    pub origin: String,
    /// The normalized host to match against [`DomainPattern`]s: lowercase,
    /// no port, no trailing dot, no leading `www.`; an IPv4 address as
    /// `127.0.0.1`, an IPv6 address in brackets as `[::1]`.
    pub host: String,
}

/// Why the calling website could not be determined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginError {
    /// Neither an `Origin` nor a (non-empty) `Referer` header.
    Missing,
    /// `Origin: null` (sandboxed frame, `file:` page, privacy redirect).
    NullOrigin,
    /// The header's bytes are not UTF-8.
    NotUtf8 { header: &'static str },
    /// The header is not an absolute URL.
    Unparsable { header: &'static str },
    /// A scheme other than `http` or `https`.
    UnsupportedScheme {
        header: &'static str,
        scheme: String,
    },
    /// The URL carries user info (`user@host`, `user:pass@host`, or a bare `@`).
    Credentials { header: &'static str },
    /// The URL has no host.
    EmptyHost { header: &'static str },
    /// The `Origin` header has more than `scheme://host[:port]` (a path,
    /// even just `/`, a query or a fragment) or is otherwise not in the
    /// form browsers send.
    NotAnOrigin,
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginError::Missing => f.write_str(
                "the request has neither an Origin nor a Referer header, so the calling website is unknown",
            ),
            OriginError::NullOrigin => f.write_str(
                "the Origin header is \"null\" (an opaque origin), so the calling website is unknown",
            ),
            OriginError::NotUtf8 { header } => {
                write!(f, "the {header} header is not valid UTF-8")
            }
            OriginError::Unparsable { header } => {
                write!(f, "the {header} header is not a valid absolute URL")
            }
            OriginError::UnsupportedScheme { header, scheme } => write!(
                f,
                "the {header} header uses the scheme \"{scheme}\", but only http and https websites are allowed"
            ),
            OriginError::Credentials { header } => write!(
                f,
                "the {header} header carries user credentials before an \"@\", which a browser never sends"
            ),
            OriginError::EmptyHost { header } => {
                write!(f, "the {header} header has no host name")
            }
            OriginError::NotAnOrigin => f.write_str(
                "the Origin header is not a bare origin of the form scheme://host[:port]",
            ),
        }
    }
}

impl std::error::Error for OriginError {}

const ORIGIN: &str = "Origin";
const REFERER: &str = "Referer";

/// Determines the calling website from the raw `Origin` and `Referer`
/// header values.
///
/// `Origin` wins whenever it is present, even when it is invalid: falling
/// back to `Referer` then would let the sender choose which header counts.
/// An empty `Referer` counts as absent.
pub fn calling_site(origin: Option<&[u8]>, referer: Option<&[u8]>) -> Result<Site, OriginError> {
    if let Some(raw) = origin {
        return site_from_origin_remembered(raw);
    }
    match referer {
        Some(raw) if !raw.trim_ascii().is_empty() => site_from_referer(raw),
        _ => Err(OriginError::Missing),
    }
}

thread_local! {
    /// The last valid `Origin` header read on this thread, and its site. A widget's traffic
    /// comes from a handful of sites, so most requests repeat the one before; parsing a URL
    /// costs more than the rest of the origin check.
    static LAST_ORIGIN: RefCell<Option<(Box<[u8]>, Site)>> = const { RefCell::new(None) };
}

/// [`site_from_origin`], remembering the last valid header of this thread.
fn site_from_origin_remembered(raw: &[u8]) -> Result<Site, OriginError> {
    let remembered = LAST_ORIGIN.with_borrow(|last| match last {
        Some((header, site)) if **header == *raw => Some(site.clone()),
        _ => None,
    });
    if let Some(site) = remembered {
        return Ok(site);
    }
    let site = site_from_origin(raw)?;
    LAST_ORIGIN.set(Some((raw.into(), site.clone())));
    Ok(site)
}

fn site_from_origin(raw: &[u8]) -> Result<Site, OriginError> {
    let text = header_text(raw, ORIGIN)?;
    if text.eq_ignore_ascii_case("null") {
        return Err(OriginError::NullOrigin);
    }
    let (url, host) = parse_web_url(text, ORIGIN)?;
    // Browsers send exactly the ASCII serialization of the origin; anything
    // else (a path, a default port, percent-escapes) is not an origin.
    if !text.eq_ignore_ascii_case(&url.origin().ascii_serialization()) {
        return Err(OriginError::NotAnOrigin);
    }
    Ok(Site {
        origin: text.to_owned(),
        host,
    })
}

fn site_from_referer(raw: &[u8]) -> Result<Site, OriginError> {
    let text = header_text(raw, REFERER)?;
    let (url, host) = parse_web_url(text, REFERER)?;
    Ok(Site {
        origin: url.origin().ascii_serialization(),
        host,
    })
}

fn header_text<'a>(raw: &'a [u8], header: &'static str) -> Result<&'a str, OriginError> {
    std::str::from_utf8(raw.trim_ascii()).map_err(|_| OriginError::NotUtf8 { header })
}

/// Parses an absolute http(s) URL without user info and returns it with
/// its normalized host.
fn parse_web_url(text: &str, header: &'static str) -> Result<(Url, String), OriginError> {
    let url = match Url::parse(text) {
        Ok(url) => url,
        Err(url::ParseError::EmptyHost) => return Err(OriginError::EmptyHost { header }),
        Err(_) => return Err(OriginError::Unparsable { header }),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OriginError::UnsupportedScheme {
            header,
            scheme: url.scheme().to_owned(),
        });
    }
    // The parser drops an empty user info (`https://@example.com`), so the
    // raw authority is checked for `@` as well.
    if !url.username().is_empty() || url.password().is_some() || authority_has_at(text) {
        return Err(OriginError::Credentials { header });
    }
    let host = match url.host() {
        Some(Host::Domain(domain)) => normalize_host(domain).to_owned(),
        // `host_str` is the address as the URL serializes it ("[::1]").
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => url.host_str().unwrap_or_default().to_owned(),
        None => String::new(),
    };
    if host.is_empty() {
        return Err(OriginError::EmptyHost { header });
    }
    Ok((url, host))
}

/// Whether the authority of an http(s) URL string (between the slashes
/// after the scheme and the first `/`, `\`, `?` or `#`) contains `@`.
fn authority_has_at(text: &str) -> bool {
    let Some((_scheme, rest)) = text.split_once(':') else {
        return false;
    };
    let authority = rest.trim_start_matches(['/', '\\']);
    let end = authority
        .find(['/', '\\', '?', '#'])
        .unwrap_or(authority.len());
    authority[..end].contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_origin(origin: &str) -> Result<Site, OriginError> {
        calling_site(Some(origin.as_bytes()), None)
    }

    fn from_referer(referer: &str) -> Result<Site, OriginError> {
        calling_site(None, Some(referer.as_bytes()))
    }

    fn site(origin: &str, host: &str) -> Site {
        Site {
            origin: origin.to_owned(),
            host: host.to_owned(),
        }
    }

    fn pattern(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    /// Whether a browser at `origin` is allowed by the entry `domain`.
    fn allowed(domain: &str, origin: &str) -> bool {
        match from_origin(origin) {
            Ok(site) => pattern(domain).matches(&site.host),
            Err(_) => false,
        }
    }

    #[test]
    fn a_remembered_origin_gives_what_a_fresh_parse_gives() {
        let sequence = [
            "https://a.example",
            "https://a.example",
            "null",
            "https://a.example",
            "https://a.example/path",
            "https://b.example:8443",
            "https://b.example:8443",
            " https://a.example ",
            "https://a.example",
        ];
        for origin in sequence {
            let fresh = site_from_origin(origin.as_bytes());
            assert_eq!(from_origin(origin), fresh, "{origin:?}");
        }
    }

    #[test]
    fn origin_header_gives_origin_and_normalized_host() {
        assert_eq!(
            from_origin("https://example.com"),
            Ok(site("https://example.com", "example.com"))
        );
        assert_eq!(
            from_origin("https://www.example.com"),
            Ok(site("https://www.example.com", "example.com"))
        );
        assert_eq!(
            from_origin("http://shop.example.com"),
            Ok(site("http://shop.example.com", "shop.example.com"))
        );
    }

    #[test]
    fn port_stays_in_the_origin_but_not_in_the_host() {
        let caller = from_origin("https://example.com:8443").unwrap();
        assert_eq!(caller, site("https://example.com:8443", "example.com"));
        assert!(pattern("example.com").matches(&caller.host));
        let caller = from_referer("http://localhost:3000/demo.html").unwrap();
        assert_eq!(caller, site("http://localhost:3000", "localhost"));
        assert!(pattern("localhost").matches(&caller.host));
    }

    #[test]
    fn origin_value_is_echoed_as_sent_after_trimming() {
        let caller = from_origin("  https://Example.COM \t").unwrap();
        assert_eq!(caller, site("https://Example.COM", "example.com"));
    }

    #[test]
    fn referer_with_path_and_query_gives_its_origin() {
        assert_eq!(
            from_referer("https://WWW.Example.com:444/products/42?ref=mail&to=a@b.com#top"),
            Ok(site("https://www.example.com:444", "example.com"))
        );
        // The default port is not part of the serialized origin.
        assert_eq!(
            from_referer("https://example.com:443/"),
            Ok(site("https://example.com", "example.com"))
        );
    }

    #[test]
    fn origin_is_preferred_over_referer() {
        let caller = calling_site(
            Some(b"https://widget-host.com"),
            Some(b"https://other.com/page"),
        );
        assert_eq!(
            caller,
            Ok(site("https://widget-host.com", "widget-host.com"))
        );
    }

    #[test]
    fn an_invalid_origin_never_falls_back_to_referer() {
        let referer = Some(&b"https://example.com/page"[..]);
        let cases: [(&[u8], OriginError); 6] = [
            (b"null", OriginError::NullOrigin),
            (b"", OriginError::Unparsable { header: "Origin" }),
            (b"https://example.com/x", OriginError::NotAnOrigin),
            (
                b"https://evil.net@example.com",
                OriginError::Credentials { header: "Origin" },
            ),
            (
                b"ftp://example.com",
                OriginError::UnsupportedScheme {
                    header: "Origin",
                    scheme: "ftp".into(),
                },
            ),
            (b"\xFFexample", OriginError::NotUtf8 { header: "Origin" }),
        ];
        for (origin, expected) in cases {
            assert_eq!(calling_site(Some(origin), referer), Err(expected));
        }
    }

    #[test]
    fn missing_headers_are_rejected() {
        assert_eq!(calling_site(None, None), Err(OriginError::Missing));
        assert_eq!(calling_site(None, Some(b"  ")), Err(OriginError::Missing));
    }

    #[test]
    fn null_origin_is_rejected() {
        assert_eq!(from_origin("null"), Err(OriginError::NullOrigin));
        assert_eq!(from_origin("NULL"), Err(OriginError::NullOrigin));
    }

    #[test]
    fn non_utf8_and_unparsable_values_are_rejected() {
        assert_eq!(
            calling_site(None, Some(b"https://caf\xE9.com/")),
            Err(OriginError::NotUtf8 { header: "Referer" })
        );
        for value in [
            "example.com",
            "/relative/path",
            "https://exa mple.com",
            "http://[::1",
        ] {
            assert_eq!(
                from_referer(value),
                Err(OriginError::Unparsable { header: "Referer" }),
                "{value}"
            );
        }
    }

    #[test]
    fn only_http_and_https_schemes_are_accepted() {
        for (value, scheme) in [
            ("file:///home/me/page.html", "file"),
            ("chrome-extension://abcdef", "chrome-extension"),
            ("ws://example.com", "ws"),
            ("javascript:alert(1)", "javascript"),
            ("data:text/html,hi", "data"),
        ] {
            assert_eq!(
                from_referer(value),
                Err(OriginError::UnsupportedScheme {
                    header: "Referer",
                    scheme: scheme.into()
                }),
                "{value}"
            );
        }
        assert!(from_origin("HTTPS://EXAMPLE.COM").is_ok());
    }

    #[test]
    fn any_user_info_is_rejected() {
        for value in [
            "https://example.com@evil.net",
            "https://evil.net@example.com",
            "https://user:pass@example.com",
            "https://:@example.com",
            "https://@example.com",
            "http:\\\\evil.net@example.com",
            "https://evil.net\t@example.com",
        ] {
            assert_eq!(
                from_origin(value),
                Err(OriginError::Credentials { header: "Origin" }),
                "{value:?}"
            );
            let referer = format!("{value}/page");
            assert_eq!(
                from_referer(&referer),
                Err(OriginError::Credentials { header: "Referer" }),
                "{referer:?}"
            );
        }
    }

    #[test]
    fn an_at_sign_after_the_authority_is_not_user_info() {
        for value in [
            "https://example.com/@evil.net",
            "https://example.com?next=x@evil.net",
            "https://example.com#@evil.net",
            "https://example.com\\@evil.net",
        ] {
            assert_eq!(
                from_referer(value).map(|s| s.host),
                Ok("example.com".to_owned()),
                "{value:?}"
            );
        }
    }

    #[test]
    fn empty_hosts_are_rejected() {
        for value in ["https://", "http://:8080", "https://.", "https://?q"] {
            assert_eq!(
                from_referer(value),
                Err(OriginError::EmptyHost { header: "Referer" }),
                "{value:?}"
            );
        }
    }

    #[test]
    fn an_origin_with_anything_after_the_port_is_rejected() {
        for value in [
            "https://a.com/x",
            "https://a.com/",
            "https://a.com?q",
            "https://a.com#f",
            "https://a.com:443",
            "https://exa%6Dple.com",
        ] {
            assert_eq!(
                from_origin(value),
                Err(OriginError::NotAnOrigin),
                "{value:?}"
            );
        }
    }

    #[test]
    fn ip_literal_hosts_are_kept_as_addresses() {
        assert_eq!(
            from_origin("http://127.0.0.1:8080"),
            Ok(site("http://127.0.0.1:8080", "127.0.0.1"))
        );
        assert_eq!(
            from_origin("http://[::1]:3000"),
            Ok(site("http://[::1]:3000", "[::1]"))
        );
        assert!(pattern("127.0.0.1").matches("127.0.0.1"));
        assert!(pattern("::1").matches("[::1]"));
        assert!(pattern("[::1]").matches("[::1]"));
        assert!(!pattern("127.0.0.1").matches("127.0.0.2"));
        assert!(!pattern("127.0.0.1").matches("[::1]"));
        // The URL parser's own IPv6 spelling still compares equal.
        let mapped = from_referer("http://[::ffff:1.2.3.4]/").unwrap();
        assert!(pattern("::ffff:1.2.3.4").matches(&mapped.host));
    }

    #[test]
    fn trailing_dot_hosts_are_normalized() {
        assert_eq!(
            from_origin("https://example.com."),
            Ok(site("https://example.com.", "example.com"))
        );
        assert!(allowed("example.com", "https://example.com."));
        assert!(allowed("example.com.", "https://example.com"));
        assert!(pattern("*.example.com").matches("shop.example.com."));
    }

    #[test]
    fn international_names_compare_in_punycode() {
        let caller = from_referer("https://Bücher.example/shop").unwrap();
        assert_eq!(
            caller,
            site("https://xn--bcher-kva.example", "xn--bcher-kva.example")
        );
        assert!(pattern("bücher.example").matches(&caller.host));
        assert!(pattern("xn--bcher-kva.example").matches(&caller.host));
        assert!(pattern("*.bücher.example").matches("shop.xn--bcher-kva.example"));
        // A Cyrillic "а" look-alike is a different host.
        let homograph = from_referer("https://exаmple.com/").unwrap();
        assert!(homograph.host.starts_with("xn--"), "{}", homograph.host);
        assert!(!pattern("example.com").matches(&homograph.host));
        assert!(!pattern("example.com").matches("exаmple.com"));
    }

    #[test]
    fn errors_read_as_distinct_sentences() {
        let errors = [
            OriginError::Missing,
            OriginError::NullOrigin,
            OriginError::NotUtf8 { header: "Origin" },
            OriginError::Unparsable { header: "Referer" },
            OriginError::UnsupportedScheme {
                header: "Origin",
                scheme: "ftp".into(),
            },
            OriginError::Credentials { header: "Origin" },
            OriginError::EmptyHost { header: "Referer" },
            OriginError::NotAnOrigin,
        ];
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for (i, message) in messages.iter().enumerate() {
            assert!(message.starts_with("the "), "{message}");
            assert!(!messages[..i].contains(message), "duplicate: {message}");
        }
        assert!(messages[4].contains("\"ftp\""));
        assert!(messages[3].contains("Referer"));
        let boxed: Box<dyn std::error::Error> = Box::new(OriginError::Missing);
        assert_eq!(boxed.to_string(), messages[0]);
    }

    #[test]
    fn exact_entries_match_case_insensitively_and_ignore_www() {
        let entry = pattern("example.com");
        assert!(entry.matches("example.com"));
        assert!(entry.matches("EXAMPLE.com"));
        assert!(entry.matches("www.example.com"));
        assert!(allowed("example.com", "https://www.example.com"));
        assert!(allowed("www.example.com", "https://example.com"));
        assert!(allowed("WWW.EXAMPLE.COM", "https://www.example.com"));
        assert!(!entry.matches("shop.example.com"));
        assert!(!entry.matches(""));
    }

    #[test]
    fn look_alike_hosts_never_match() {
        let shop = pattern("shop.example.com");
        assert!(shop.matches("shop.example.com"));
        for host in [
            "shop.example.com.evil.net",
            "evilshop.example.com",
            "shop.example.co",
            "shop-example.com",
            "example.com",
            "x.shop.example.com",
        ] {
            assert!(!shop.matches(host), "{host}");
        }
        let apex = pattern("example.com");
        for host in [
            "notexample.com",
            "example.com.evil.net",
            "example.co",
            "com",
        ] {
            assert!(!apex.matches(host), "{host}");
        }
        let wildcard = pattern("*.example.com");
        for host in [
            "evilexample.com",
            "example.com.evil.net",
            "shop.example.com.evil.net",
            "example.com",
            ".example.com",
            "xexample.com",
        ] {
            assert!(!wildcard.matches(host), "{host}");
        }
        assert!(!allowed("example.com", "https://example.com.evil.net"));
        assert!(!allowed("example.com", "https://example.com@evil.net"));
        assert!(!allowed("example.com", "https://evil.net@example.com"));
    }

    #[test]
    fn wildcards_match_subdomains_at_any_depth_but_not_the_apex() {
        let entry = pattern("*.example.com");
        assert!(entry.matches("shop.example.com"));
        assert!(entry.matches("a.b.c.example.com"));
        assert!(entry.matches("Shop.Example.COM"));
        assert!(allowed("*.example.com", "https://eu.shop.example.com:8443"));
        // The apex, and www (the same site), need their own entry.
        assert!(!entry.matches("example.com"));
        assert!(!entry.matches("www.example.com"));
        assert!(!allowed("*.example.com", "https://www.example.com"));
        assert!(!entry.matches("127.0.0.1"));
    }

    #[test]
    fn a_domain_list_with_apex_and_wildcard_covers_the_whole_site() {
        let list: Vec<DomainPattern> = ["example.com", "*.example.com"].map(pattern).to_vec();
        let allows = |origin: &str| {
            let host = from_origin(origin).unwrap().host;
            list.iter().any(|p| p.matches(&host))
        };
        assert!(allows("https://example.com"));
        assert!(allows("https://www.example.com"));
        assert!(allows("https://blog.example.com"));
        assert!(!allows("https://example.org"));
        assert!(!allows("https://evilexample.com"));
    }
}
