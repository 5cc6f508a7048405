//! Genesys Cloud regions and their hosts (DESIGN §3).
//!
//! Every region has an API host `https://api.<domain>` and a separate login host
//! `https://login.<domain>`. Explicit base URLs (the simulator, a proxy) override the region.

/// Genesys Cloud regions: region name → domain. The ten of DESIGN §3 and the newer ones the
/// official SDKs list (`PureCloudRegionHosts`).
pub const REGIONS: [(&str, &str); 18] = [
    ("us-east-1", "mypurecloud.com"),
    ("eu-west-1", "mypurecloud.ie"),
    ("eu-central-1", "mypurecloud.de"),
    ("ap-southeast-2", "mypurecloud.com.au"),
    ("ap-northeast-1", "mypurecloud.jp"),
    ("us-west-2", "usw2.pure.cloud"),
    ("ca-central-1", "cac1.pure.cloud"),
    ("eu-west-2", "euw2.pure.cloud"),
    ("ap-south-1", "aps1.pure.cloud"),
    ("sa-east-1", "sae1.pure.cloud"),
    ("ap-northeast-2", "apne2.pure.cloud"),
    ("ap-northeast-3", "apne3.pure.cloud"),
    ("ap-southeast-1", "apse1.pure.cloud"),
    ("eu-central-2", "euc2.pure.cloud"),
    ("me-central-1", "mec1.pure.cloud"),
    ("mx-central-1", "mxc1.pure.cloud"),
    ("us-east-2", "use2.us-gov-pure.cloud"),
    ("eusc-de-east-1", "edee1.eusc-pure.cloud"),
];

/// Domains under which every Genesys Cloud region lives, so that a region newer than this table,
/// named by its `api.` URL, still gets its `login.` host (as the official SDKs derive it).
const GENESYS_DOMAIN_SUFFIXES: [&str; 3] = [".pure.cloud", ".us-gov-pure.cloud", ".eusc-pure.cloud"];

/// The domain of a region (`"eu-west-1"` → `"mypurecloud.ie"`), case-insensitive.
pub fn region_domain(region: &str) -> Option<&'static str> {
    let region = region.trim();
    REGIONS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(region))
        .map(|(_, domain)| *domain)
}

/// The base URLs of one deployment: where the REST API lives and where tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    /// e.g. `https://api.mypurecloud.com`, no trailing slash.
    pub api_base_url: String,
    /// e.g. `https://login.mypurecloud.com`, no trailing slash.
    pub login_base_url: String,
}

impl Hosts {
    /// The hosts of a named region.
    pub fn for_region(region: &str) -> Option<Self> {
        region_domain(region).map(|domain| Self {
            api_base_url: format!("https://api.{domain}"),
            login_base_url: format!("https://login.{domain}"),
        })
    }
}

/// Why explicit URLs or a region could not be turned into [`Hosts`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostsError {
    #[error("unknown Genesys region {region:?} (GENESYS_REGION); known regions: {known}", known = known_regions())]
    UnknownRegion { region: String },
    #[error("{var} is not an absolute http(s) URL: {reason}")]
    InvalidUrl { var: &'static str, reason: String },
}

fn known_regions() -> String {
    REGIONS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

/// Resolves the hosts from the region and the optional explicit URLs.
///
/// - An explicit URL always wins for its own host.
/// - Only `api_url` given: if its host is `api.<domain>`, the login host is `login.<domain>`
///   (a real Genesys deployment named by URL); otherwise (the simulator, a proxy) the login base
///   URL is the API base URL.
/// - Only `login_url` given: the API host comes from the region.
/// - Neither: both come from the region.
pub fn resolve_hosts(region: &str, api_url: Option<&str>, login_url: Option<&str>) -> Result<Hosts, HostsError> {
    let api_url = api_url.map(str::trim).filter(|u| !u.is_empty());
    let login_url = login_url.map(str::trim).filter(|u| !u.is_empty());
    let api = api_url.map(|u| normalize_base_url(u, "GENESYS_API_URL")).transpose()?;
    let login = login_url
        .map(|u| normalize_base_url(u, "GENESYS_LOGIN_URL"))
        .transpose()?;
    match (api, login) {
        (Some(api_base_url), Some(login_base_url)) => Ok(Hosts {
            api_base_url,
            login_base_url,
        }),
        (Some(api_base_url), None) => {
            let login_base_url = derived_login_url(&api_base_url).unwrap_or_else(|| api_base_url.clone());
            Ok(Hosts {
                api_base_url,
                login_base_url,
            })
        }
        (None, login) => {
            let mut hosts = Hosts::for_region(region).ok_or_else(|| HostsError::UnknownRegion {
                region: region.to_string(),
            })?;
            if let Some(login_base_url) = login {
                hosts.login_base_url = login_base_url;
            }
            Ok(hosts)
        }
    }
}

/// `https://api.<domain>` → `https://login.<domain>` for a Genesys domain.
fn derived_login_url(api_base_url: &str) -> Option<String> {
    let url = reqwest::Url::parse(api_base_url).ok()?;
    let domain = url.host_str()?.strip_prefix("api.")?.to_ascii_lowercase();
    let genesys = REGIONS.iter().any(|(_, known)| *known == domain)
        || domain.starts_with("mypurecloud.")
        || GENESYS_DOMAIN_SUFFIXES.iter().any(|suffix| domain.ends_with(suffix));
    genesys.then(|| format!("{}://login.{domain}", url.scheme()))
}

/// Checks that `raw` is an absolute http(s) URL and drops a trailing slash.
pub(crate) fn normalize_base_url(raw: &str, var: &'static str) -> Result<String, HostsError> {
    let url = reqwest::Url::parse(raw).map_err(|e| HostsError::InvalidUrl {
        var,
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HostsError::InvalidUrl {
            var,
            reason: format!("scheme {:?} is not http or https", url.scheme()),
        });
    }
    if url.host_str().is_none() {
        return Err(HostsError::InvalidUrl {
            var,
            reason: "no host".to_string(),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(HostsError::InvalidUrl {
            var,
            reason: "a base URL takes no query or fragment".to_string(),
        });
    }
    Ok(raw.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_maps_to_api_and_login_hosts() {
        for (region, domain) in REGIONS {
            let hosts = resolve_hosts(region, None, None).unwrap();
            assert_eq!(hosts.api_base_url, format!("https://api.{domain}"));
            assert_eq!(hosts.login_base_url, format!("https://login.{domain}"));
        }
        // Spot checks against the official SDKs' PureCloudRegionHosts.
        for (region, domain) in [
            ("us-east-1", "mypurecloud.com"),
            ("eu-west-1", "mypurecloud.ie"),
            ("ap-northeast-2", "apne2.pure.cloud"),
            ("us-east-2", "use2.us-gov-pure.cloud"),
            ("eusc-de-east-1", "edee1.eusc-pure.cloud"),
        ] {
            assert_eq!(region_domain(region), Some(domain), "{region}");
        }
    }

    #[test]
    fn region_names_are_case_insensitive_and_unknown_ones_are_listed() {
        assert_eq!(region_domain(" EU-West-1 "), Some("mypurecloud.ie"));
        let err = resolve_hosts("mars-1", None, None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("mars-1") && text.contains("GENESYS_REGION") && text.contains("sa-east-1"),
            "{text}"
        );
    }

    #[test]
    fn explicit_urls_override_the_region() {
        let hosts = resolve_hosts("us-east-1", Some("http://127.0.0.1:9000/"), None).unwrap();
        assert_eq!(hosts.api_base_url, "http://127.0.0.1:9000");
        assert_eq!(hosts.login_base_url, "http://127.0.0.1:9000");

        let hosts = resolve_hosts("us-east-1", Some("https://api.mypurecloud.de"), None).unwrap();
        assert_eq!(hosts.login_base_url, "https://login.mypurecloud.de");

        // A region newer than the table, named by its API URL, still gets its login host.
        let hosts = resolve_hosts("us-east-1", Some("https://api.xyz9.pure.cloud/"), None).unwrap();
        assert_eq!(hosts.login_base_url, "https://login.xyz9.pure.cloud");

        let hosts = resolve_hosts("eu-west-1", None, Some("http://login.proxy:8080")).unwrap();
        assert_eq!(hosts.api_base_url, "https://api.mypurecloud.ie");
        assert_eq!(hosts.login_base_url, "http://login.proxy:8080");

        let hosts = resolve_hosts("nowhere", Some("http://a:1"), Some("http://b:2")).unwrap();
        assert_eq!(
            hosts,
            Hosts {
                api_base_url: "http://a:1".into(),
                login_base_url: "http://b:2".into()
            }
        );
    }

    #[test]
    fn bad_urls_name_their_variable() {
        let err = resolve_hosts("us-east-1", Some("not a url"), None).unwrap_err();
        assert!(err.to_string().contains("GENESYS_API_URL"), "{err}");
        let err = resolve_hosts("us-east-1", None, Some("ftp://x")).unwrap_err();
        assert!(err.to_string().contains("GENESYS_LOGIN_URL"), "{err}");
    }
}
