//! Which tenant a calling site belongs to.
//!
//! Built once at start-up from the configured tenants. A host is looked up among exact
//! domains first (a hash map: one lookup however many tenants), then among `*.` wildcards
//! from the most specific down, so a tenant that lists `shop.example.com` wins over one that
//! lists `*.example.com`. Entries are [`DomainPattern`]s, already parsed and normalized by
//! the configuration; two tenants never share one (the configuration refuses that, and
//! [`TenantDirectory::build`] does too, for tenants built another way).

use crate::config::Tenant;
use crate::domain::{normalize_host, DomainPattern};
use std::collections::HashMap;
use std::sync::Arc;

/// All tenants, indexed by domain.
pub struct TenantDirectory {
    /// Exact domains (and IPs) in their normalized form, as [`crate::origin::Site::host`] is.
    exact: HashMap<String, Arc<Tenant>>,
    /// Wildcard patterns with their tenant, longest (most specific) first.
    wildcards: Vec<(DomainPattern, Arc<Tenant>)>,
    tenants: Vec<Arc<Tenant>>,
}

impl TenantDirectory {
    /// Index `tenants`; a domain listed by two of them is an error naming both.
    pub fn build(tenants: &[Tenant]) -> Result<Self, String> {
        let mut owners: HashMap<&DomainPattern, usize> = HashMap::new();
        let mut exact = HashMap::new();
        let mut wildcards = Vec::new();
        let mut all = Vec::new();
        for (index, tenant) in tenants.iter().enumerate() {
            let shared = Arc::new(tenant.clone());
            for pattern in &tenant.domains {
                if let Some(owner) = owners.insert(pattern, index).filter(|&o| o != index) {
                    return Err(format!(
                        "tenants `{}` and `{}` both list the domain `{pattern}`: a domain may \
                         belong to one tenant only",
                        tenants[owner].name, tenant.name
                    ));
                }
                if pattern.is_wildcard() {
                    wildcards.push((pattern.clone(), shared.clone()));
                } else {
                    exact.insert(pattern.to_string(), shared.clone());
                }
            }
            all.push(shared);
        }
        wildcards.sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.to_string().len()));
        Ok(TenantDirectory {
            exact,
            wildcards,
            tenants: all,
        })
    }

    /// The tenant serving `host` (already normalized by [`crate::origin::calling_site`]).
    pub fn find(&self, host: &str) -> Option<&Arc<Tenant>> {
        // Normalized as `DomainPattern::matches` does, so both ways of matching agree.
        let exact = normalize_host(host);
        self.exact.get(exact).or_else(|| {
            self.wildcards
                .iter()
                .find(|(pattern, _)| pattern.matches(host))
                .map(|(_, tenant)| tenant)
        })
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// A tenant of the Assistants API named `name` serving `domains`, with everything optional
/// off: for the unit tests of any module (struct update syntax changes what a test needs).
#[cfg(test)]
pub(crate) fn test_tenant(name: &str, domains: &[&str]) -> Tenant {
    use crate::config::{Secret, StreamFormat, UpstreamApi};
    Tenant {
        name: name.into(),
        domains: domains.iter().map(|d| d.parse().unwrap()).collect(),
        api_key: Secret::new(format!("sk-{name}")),
        api: UpstreamApi::Assistants {
            assistant_id: format!("asst_{name}"),
        },
        lead_recipients: vec![],
        lead_tool: "sendEmail".into(),
        stream_format: StreamFormat::OpenAi,
        redact_run_objects: false,
        rate_limit: None,
        daily_token_budget: None,
        turnstile_secret: None,
        turnstile_site_key: None,
        max_output_tokens: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, domains: &[&str]) -> Tenant {
        test_tenant(name, domains)
    }

    #[test]
    fn exact_domains_win_over_wildcards() {
        let dir = TenantDirectory::build(&[
            tenant("wild", &["*.example.com"]),
            tenant("shop", &["shop.example.com"]),
        ])
        .unwrap();
        assert_eq!(dir.find("shop.example.com").unwrap().name, "shop");
        assert_eq!(dir.find("blog.example.com").unwrap().name, "wild");
        assert!(dir.find("example.com").is_none());
        assert!(dir.find("evilexample.com").is_none());
    }

    #[test]
    fn the_more_specific_wildcard_wins() {
        let dir = TenantDirectory::build(&[
            tenant("outer", &["*.example.com"]),
            tenant("inner", &["*.eu.example.com"]),
        ])
        .unwrap();
        assert_eq!(dir.find("shop.eu.example.com").unwrap().name, "inner");
        assert_eq!(dir.find("shop.us.example.com").unwrap().name, "outer");
    }

    #[test]
    fn exact_entries_are_found_in_their_normalized_form() {
        let dir = TenantDirectory::build(&[
            tenant("shop", &["WWW.Shop.Example.com"]),
            tenant("local", &["127.0.0.1", "::1", "localhost"]),
        ])
        .unwrap();
        for origin in [
            "https://shop.example.com",
            "https://www.shop.example.com:8443",
            "HTTPS://SHOP.EXAMPLE.COM",
        ] {
            let site = crate::origin::calling_site(Some(origin.as_bytes()), None).unwrap();
            assert_eq!(dir.find(&site.host).unwrap().name, "shop", "{origin}");
        }
        for origin in [
            "http://127.0.0.1:3000",
            "http://[::1]:3000",
            "http://localhost:5173",
        ] {
            let site = crate::origin::calling_site(Some(origin.as_bytes()), None).unwrap();
            assert_eq!(dir.find(&site.host).unwrap().name, "local", "{origin}");
        }
    }

    #[test]
    fn a_site_listed_by_two_tenants_is_refused_naming_both() {
        for (first, second) in [
            ("example.com", "www.example.com"),
            ("*.Example.com.", "*.example.com"),
            ("::1", "[::1]"),
        ] {
            let err = TenantDirectory::build(&[
                tenant("alice", &["alice.test", first]),
                tenant("bob", &[second]),
            ])
            .err()
            .unwrap_or_else(|| panic!("{first} and {second} were both accepted"));
            assert!(err.contains("`alice`") && err.contains("`bob`"), "{err}");
            let same: DomainPattern = second.parse().unwrap();
            assert!(err.contains(&format!("`{same}`")), "{err}");
        }
        // Two spellings of one site within one tenant are harmless.
        let dir = TenantDirectory::build(&[tenant("a", &["example.com", "www.example.com"])]);
        assert_eq!(dir.unwrap().find("example.com").unwrap().name, "a");
    }
}
