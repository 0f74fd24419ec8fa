//! A 3-node OpenBao Raft cluster, as Vault runs in shared environments:
//! seeding through a standby, and through a leader failover.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::{block_on, Action, Proxy, RaftCluster, Sandbox};

fn fixtures(n: usize, version: &str) -> serde_json::Map<String, serde_json::Value> {
    (0..n).map(|i| (format!("raft-secret-{i:05}"), format!("value-{i}-{version}").into())).collect()
}

#[test]
fn seeds_through_a_standby_and_through_a_leader_failover() {
    if !crate::support::require_tools(&["bao", "kubectl"]) {
        return;
    }
    let mut cluster = RaftCluster::start();
    let sb = Sandbox::new();
    let leader = cluster.leader().expect("a leader");
    let standby = (leader + 1) % 3;
    // The default 8 retries outwait an election on an idle machine (12.8 s at least); on a CI
    // machine running the other tests beside three OpenBao nodes, one has taken longer.
    sb.write(".local/secrets.toml", "[vault]\nretries = 12\n");
    let env =
        |addr: &str| vec![("VAULT_ADDR", addr.to_string()), ("VAULT_TOKEN", cluster.token.clone())];
    let run = |addr: &str, file: &str| {
        let e = env(addr);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sb.xtask_env(&["secrets", "seed", "--provider", "vault", "--fixtures", file], &e)
    };

    // Through a standby: it forwards to the leader.
    let first = fixtures(200, "v1");
    sb.write("raft-v1.json", &serde_json::to_string(&first).unwrap());
    let out = run(&cluster.addrs[standby], sb.path("raft-v1.json").to_str().unwrap()).ok();
    assert!(out.stdout.contains("200 written"), "{}", out.stdout);

    // Kill the leader mid-seed; the seed goes through the surviving standby.
    let second = fixtures(1000, "v2");
    sb.write("raft-v2.json", &serde_json::to_string(&second).unwrap());
    let pid = cluster.pid(leader).unwrap();
    let writes = Arc::new(AtomicUsize::new(0));
    let w = writes.clone();
    let proxy = Proxy::start(
        crate::support::port_of(&cluster.addrs[standby]),
        Arc::new(move |req| {
            if req.method == "POST"
                && req.path.starts_with("/v1/secret/data/")
                && w.fetch_add(1, Ordering::SeqCst) == 300
            {
                let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            Action::Forward
        }),
    );
    let out = run(&proxy.addr(), sb.path("raft-v2.json").to_str().unwrap());
    assert_eq!(out.code, 0, "the seed finishes after re-election:\n{}", out.all());
    assert!(out.stdout.contains("retries)"), "{}", out.stdout);
    cluster.kill(leader);
    let new_leader = cluster.leader().expect("a new leader was elected");
    assert_ne!(new_leader, leader);
    let client = cluster.client(new_leader);
    for (name, value) in &second {
        let data: HashMap<String, String> =
            block_on(vaultrs::kv2::read(&client, "secret", name)).unwrap();
        assert_eq!(data["value"], value.as_str().unwrap(), "{name} is correct after the failover");
    }
}
