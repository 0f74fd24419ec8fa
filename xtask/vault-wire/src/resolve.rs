//! A resolver that looks each host up once a minute: ureq's own looks it up
//! before every request, on a new thread when a timeout is set.

use std::time::Duration;

/// How long a resolved address is reused before it is looked up again.
const RESOLVE_TTL: Duration = Duration::from_secs(60);

/// Looks each host up once and reuses the answer for [`RESOLVE_TTL`].
///
/// ureq resolves the host before every request, pooled connection or not,
/// and with a timeout set (ours always is) its default resolver does each
/// lookup on a new thread: a thread per request, 2,000 `clone3` calls for a
/// 1,000-secret seed. Here only the first request of a host (per TTL) pays
/// for that thread. The URI keeps its host name, so TLS still verifies it
/// and sends it as SNI.
#[derive(Debug, Default)]
pub struct OnceResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    /// Read by every request of every thread: a read lock never waits
    /// unless a lookup is being stored.
    cache: std::sync::RwLock<Vec<ResolvedHost>>,
}

#[derive(Debug)]
struct ResolvedHost {
    key: String,
    at: std::time::Instant,
    addrs: ureq::unversioned::resolver::ResolvedSocketAddrs,
}

impl ureq::unversioned::resolver::Resolver for OnceResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        );
        {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache
                .iter()
                .find(|h| h.key == key && h.at.elapsed() < RESOLVE_TTL)
            {
                return Ok(hit.addrs.clone());
            }
        }
        // Concurrent first requests may each look up: harmless, and bounded
        // by the pool size.
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.retain(|h| h.key != key);
        cache.push(ResolvedHost {
            key,
            at: std::time::Instant::now(),
            addrs: addrs.clone(),
        });
        Ok(addrs)
    }
}
