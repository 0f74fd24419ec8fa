//! kubectl: the current context, port-forwards, ExternalSecret status.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The current kube context, or `None` when kubectl is missing or has none.
pub fn current_context() -> Option<String> {
    let out = Command::new("kubectl")
        .args(["config", "current-context"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let ctx = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!ctx.is_empty()).then_some(ctx)
}

/// A running `kubectl port-forward`, stopped on drop (on every exit path
/// that unwinds; on Ctrl-C the terminal signals kubectl too).
pub struct PortForward {
    child: Child,
    pub local_port: u16,
    pub target: String,
}

impl PortForward {
    /// Forwards a free loopback port to `svc/<service>:<port>` in `namespace`.
    pub fn start(namespace: &str, service: &str, port: u16) -> Result<PortForward> {
        let target = format!("svc/{service}");
        let mut child = Command::new("kubectl")
            .args([
                "port-forward",
                "--namespace",
                namespace,
                "--address",
                "127.0.0.1",
                &target,
            ])
            .arg(format!(":{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting `kubectl port-forward`: is kubectl installed and on PATH?")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = forwarded_port(&line) {
                    let _ = tx.send(port);
                    break;
                }
            }
        });
        let pf_target = format!("{namespace}/{target}:{port}");
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(local_port) => Ok(PortForward {
                child,
                local_port,
                target: pf_target,
            }),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().ok();
                let stderr = out
                    .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                    .unwrap_or_default();
                bail!(
                    "`kubectl port-forward --namespace {namespace} {target} :{port}` did not start: {}. Is Vault \
                     deployed (layer 15) and its pod running? `kubectl -n {namespace} get pods`",
                    if stderr.is_empty() { "no output" } else { &stderr }
                )
            }
        }
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.local_port)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `Forwarding from 127.0.0.1:41234 -> 8200`.
fn forwarded_port(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("Forwarding from ")?;
    let local = rest.split(" -> ").next()?;
    local.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forwarding_lines() {
        assert_eq!(
            forwarded_port("Forwarding from 127.0.0.1:41234 -> 8200"),
            Some(41234)
        );
        assert_eq!(
            forwarded_port("Forwarding from [::1]:41234 -> 8200"),
            Some(41234)
        );
        assert_eq!(forwarded_port("Handling connection for 41234"), None);
    }
}
