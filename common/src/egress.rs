//! The outbound HTTP guard (SSRF). Every request Switchyard makes on a user's behalf (webhooks now;
//! HTTP agents and tools later) goes through a client whose DNS resolver drops every address that
//! is not public, unless an operator allow-lists its network. The connection goes to the vetted
//! address, so a second lookup cannot swap it, and redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// Which destinations outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<IpNet>,
}

/// Why a destination was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("the destination {0} is not a public address and is not allow-listed")]
    NotPublic(IpAddr),
    #[error("the host `{0}` resolves to no allowed address")]
    NoAllowedAddress(String),
}

impl Guard {
    /// A guard that also lets through the given networks (e.g. `127.0.0.0/8` in development).
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Parses a comma-separated list of CIDRs or single addresses.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let allow = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{s}` is not a CIDR such as 10.0.0.0/8 or an IP address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// Whether `ip` may be reached.
    pub fn permits(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Checks an address, for URLs whose host is an IP literal (they bypass the resolver).
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Refused::NotPublic(ip))
        }
    }
}

/// Whether `ip` is a globally routable unicast address: not loopback, private, link-local,
/// CGNAT, unspecified, broadcast, multicast, documentation, benchmarking or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (first == 0x0064 && v6.segments()[1] == 0xff9b) // NAT64, may reach v4 privates
                || first == 0x2002 // 6to4, the same
                || (first == 0x2001 && v6.segments()[1] == 0) // Teredo 2001::/32
                || (first & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
                || (first == 0x0100 && v6.segments()[1..4] == [0, 0, 0]) // discard 100::/64
                || v6.segments()[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible ::/96
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18.0.0/15
        || (a == 192 && b == 88 && ip.octets()[2] == 99) // 6to4 relay anycast
        || a >= 240) // reserved and broadcast
}

struct GuardedResolver(Guard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| guard.permits(addr.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(Refused::NoAllowedAddress(host))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An HTTP client for user-supplied URLs: guarded resolver, no redirects, timeouts on everything.
pub fn client(
    guard: &Guard,
    timeout: Duration,
    user_agent: &str,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver(guard.clone())))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(user_agent)
        .no_proxy()
        .build()
}

/// The wait a response's `Retry-After` asks for, in its seconds form (the one APIs send); `None`
/// without one, or with a date.
pub fn retry_after(response: &reqwest::Response) -> Option<std::time::Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs)
}

/// A URL as messages and logs may show it: scheme, host, port and path, without the user info,
/// query or fragment that often hold a token.
pub fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// An outbound request's failure as a message that may be stored in a run or an attempt and
/// shown to its tenant: what went wrong and why, with the URL [`redacted`].
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), &redacted(url));
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Refuses a URL whose host is an IP literal the guard does not permit. Hosts given by name are
/// checked by the resolver at connect time.
pub fn check_url(guard: &Guard, url: &reqwest::Url) -> Result<(), Refused> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => guard.check(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => guard.check(IpAddr::V6(ip)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn redacted_urls_keep_no_secret() {
        let url =
            url::Url::parse("https://user:pw@hooks.example.com:8443/services/T1?token=s3cret#x")
                .expect("url");
        assert_eq!(redacted(&url), "https://hooks.example.com:8443/services/T1");
    }

    #[tokio::test]
    async fn described_errors_keep_no_query() {
        let client = reqwest::Client::new();
        // Nothing listens on port 9 of loopback.
        let err = client
            .get("http://u:p@127.0.0.1:9/x?token=s3cret")
            .send()
            .await
            .expect_err("refused");
        let text = describe(&err);
        assert!(!text.contains("s3cret") && !text.contains("u:p"), "{text}");
        assert!(text.contains("127.0.0.1:9/x"), "{text}");
    }

    #[test]
    fn refuses_non_public_addresses() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip(s)), "{s} must be refused");
            assert_eq!(
                Guard::default().check(ip(s)),
                Err(Refused::NotPublic(ip(s)))
            );
        }
    }

    #[test]
    fn permits_public_addresses() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "100.128.0.1",
        ] {
            assert!(is_public(ip(s)), "{s} must be permitted");
        }
    }

    #[test]
    fn the_allow_list_opens_only_its_networks() {
        let guard = Guard::parse("127.0.0.0/8, 10.0.0.5").expect("parses");
        assert!(guard.permits(ip("127.0.0.1")));
        assert!(guard.permits(ip("10.0.0.5")));
        assert!(!guard.permits(ip("10.0.0.6")));
        assert!(!guard.permits(ip("192.168.0.1")));
        assert!(Guard::parse("localhost").is_err());
        assert!(Guard::parse("").expect("empty is fine").allow.is_empty());
    }

    #[test]
    fn ip_literal_urls_are_checked_before_connecting() {
        let guard = Guard::default();
        let url = |s: &str| reqwest::Url::parse(s).expect("url");
        assert!(check_url(&guard, &url("http://169.254.169.254/latest/meta-data")).is_err());
        assert!(check_url(&guard, &url("http://[::1]:8080/")).is_err());
        assert!(check_url(&guard, &url("https://8.8.8.8/hook")).is_ok());
        assert!(check_url(&guard, &url("https://example.com/hook")).is_ok());
    }

    #[tokio::test]
    async fn named_hosts_resolving_to_private_addresses_are_refused_at_connect() {
        let client = client(&Guard::default(), Duration::from_secs(2), "test").expect("client");
        let err = client
            .get("http://localhost:9/")
            .send()
            .await
            .expect_err("must be refused");
        let chain = format!("{:?}", anyhow::Error::from(err));
        assert!(chain.contains("no allowed address"), "{chain}");
    }
}
