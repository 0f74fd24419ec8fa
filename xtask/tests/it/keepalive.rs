//! The Vault client's keep-alive connections: one the server closed
//! unanswered costs one retry on a fresh connection, and loses nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::{json, vault_seed, Action, OpenBao, Proxy, Sandbox};

#[test]
fn a_closed_keep_alive_connection_costs_a_retry_and_loses_nothing() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let bao = OpenBao::start();
    let sb = Sandbox::new();
    // Every 7th request that reuses a connection finds it closed,
    // unanswered, as when a server drops connections it deems idle.
    let seen = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (s, c) = (seen.clone(), closed.clone());
    let proxy = Proxy::start(
        bao.port,
        Arc::new(move |req| {
            if req.on_connection > 0 && s.fetch_add(1, Ordering::SeqCst) % 7 == 6 {
                c.fetch_add(1, Ordering::SeqCst);
                Action::Close
            } else {
                Action::Forward
            }
        }),
    );
    let report = json(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok());
    assert!(closed.load(Ordering::SeqCst) >= 5, "the proxy closed connections");
    assert!(report["not_written"].as_array().unwrap().is_empty(), "{report}");
    // ureq cannot tell a request the server never answered from one it
    // acted on, so the seed's own retry resends it: once per closed
    // connection, no more.
    let retries = report["retries"].as_u64().unwrap() as usize;
    assert!(
        retries <= closed.load(Ordering::SeqCst),
        "{retries} retries for {} closed connections: {report}",
        closed.load(Ordering::SeqCst)
    );
    // And everything landed: a second run has nothing to do.
    let again = json(&vault_seed(&sb, &bao.addr, &bao.token, &[]).ok());
    assert_eq!(again["writes"], 0, "{again}");
}
