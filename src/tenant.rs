//! Which tenant a calling site belongs to.
//!
//! Built once at start-up from the configured tenants. A host is looked up among exact
//! domains first (a hash map: one lookup however many tenants), then among `*.` wildcards
//! from the most specific down, so a tenant that lists `shop.example.com` wins over one that
//! lists `*.example.com`.

use crate::config::Tenant;
use crate::origin::DomainPattern;
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
    /// Index `tenants`; an invalid domain pattern is an error naming the tenant.
    pub fn build(tenants: &[Tenant]) -> Result<Self, String> {
        let mut exact = HashMap::new();
        let mut wildcards = Vec::new();
        let mut all = Vec::new();
        for tenant in tenants {
            let tenant = Arc::new(tenant.clone());
            for domain in &tenant.domains {
                let pattern = DomainPattern::parse(domain)
                    .map_err(|e| format!("tenant `{}`: domain `{domain}`: {e}", tenant.name))?;
                if pattern.is_wildcard() {
                    wildcards.push((pattern, tenant.clone()));
                } else {
                    exact.insert(pattern.to_string(), tenant.clone());
                }
            }
            all.push(tenant);
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
        let exact = crate::origin::normalize_host(host);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, StreamFormat, UpstreamApi};

    fn tenant(name: &str, domains: &[&str]) -> Tenant {
        Tenant {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            api_key: Secret::new(format!("sk-{name}")),
            api: UpstreamApi::Assistants {
                assistant_id: format!("asst_{name}"),
            },
            lead_recipients: vec![],
            lead_tool: "sendEmail".into(),
            stream_format: StreamFormat::OpenAi,
            redact_run_objects: false,
        }
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
    fn invalid_patterns_name_the_tenant() {
        let err = TenantDirectory::build(&[tenant("acme", &["*"])])
            .err()
            .unwrap();
        assert!(err.contains("acme"), "{err}");
    }
}
