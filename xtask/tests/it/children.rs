//! Every child process goes through `process::Tool`: none is handed the
//! Vault token, whatever our own environment holds.

use crate::support::Sandbox;

#[test]
fn no_child_is_handed_the_vault_token() {
    let sb = Sandbox::new();
    sb.scenario(serde_json::json!({"az": {}, "kubectl": {"context": "k3d-ameide"}}));
    let tokens = [("VAULT_TOKEN", "tok-never-for-az"), ("BAO_TOKEN", "tok-never-for-az")];
    // az: the whole Azure seed.
    let mut env = vec![("AZURE_KEYVAULT_NAME", "kv-dev-carol")];
    env.extend(tokens);
    sb.xtask_env(&["secrets", "seed", "--provider", "azure"], &env).ok();
    // kubectl: doctor asks for the context, the CRDs and the store.
    sb.xtask_env(&["secrets", "doctor"], &tokens);
    let calls = sb.calls();
    assert!(calls.iter().any(|c| c.tool == "az"), "{calls:?}");
    assert!(calls.iter().any(|c| c.tool == "kubectl"), "{calls:?}");
    for call in calls {
        assert!(
            call.env.is_empty(),
            "`{} {}` was handed {:?}",
            call.tool,
            call.argv.join(" "),
            call.env
        );
    }
}
