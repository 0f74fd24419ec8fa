//! The Vault client's keep-alive connections: one the server closed is
//! replaced at once, without a retry or its backoff.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::{json, vault_seed, Action, OpenBao, Proxy, Sandbox};

#[test]
fn a_closed_keep_alive_connection_is_replaced_without_a_retry() {
    if !crate::support::require_tools(&["bao"]) {
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
    assert!(
        closed.load(Ordering::SeqCst) >= 5,
        "the proxy closed connections"
    );
    assert!(
        report["not_written"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert_eq!(
        report["retries"], 0,
        "a connection the server closed costs no retry (and no backoff): {report}"
    );
    // And everything landed: a second run has nothing to do.
    let again = json(&vault_seed(&sb, &bao.addr, &bao.token, &[]).ok());
    assert_eq!(again["writes"], 0, "{again}");
}
