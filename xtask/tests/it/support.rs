//! Test harness: real OpenBao on a free loopback port, a scratch git copy
//! of the repository, the real kubectl behind a wrapper that records its
//! argv (talking to the cluster stand-in, `cluster.rs`), and fake
//! `helmfile sync` and `az` first on PATH that record what they were
//! called with.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub(crate) fn fakes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes")
}

/// PATH with the pinned tools first: `.tools/bin`, or the folder that
/// `XTASK_TEST_TOOLS_BIN` names (the harness's own tests point it at an
/// empty one).
pub(crate) fn tools_path() -> String {
    let bin = std::env::var_os("XTASK_TEST_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/bin"));
    let mut parts = vec![bin.display().to_string()];
    parts.push(std::env::var("PATH").unwrap_or_default());
    parts.join(":")
}

/// The first file `name` in the `:`-separated `path`.
pub(crate) fn find_on(path: &str, name: &str) -> Option<PathBuf> {
    path.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The variable that turns tests needing tools we lack into visible skips.
pub(crate) const SKIP_TOOL_TESTS: &str = "XTASK_SKIP_TOOL_TESTS";
/// Where skipped tests are listed, one per line (`cargo xtask test` sets
/// it and counts them); by default `target/tool-test-skips.txt`.
pub(crate) const SKIP_LOG: &str = "XTASK_TOOL_SKIP_LOG";

/// Makes sure the pinned tools `names` are there for the calling test.
///
/// A missing tool is installed by the built binary's `tools` command (the
/// code of `cargo xtask tools`), once per test process; if that fails, the
/// test fails naming the tool and the command. Only with
/// `XTASK_SKIP_TOOL_TESTS=1` does a missing tool skip the test: it returns
/// `false`, prints `SKIPPED`, and the skip is listed in the skip log for
/// `cargo xtask test` to count. No test passes silently without its tools.
pub(crate) fn require_tools(names: &[&str]) -> bool {
    if missing_tools(names).is_empty() {
        return true;
    }
    if std::env::var(SKIP_TOOL_TESTS).is_ok_and(|v| v == "1") {
        let missing = missing_tools(names);
        let test = std::thread::current().name().unwrap_or("an unnamed test").to_string();
        let line = format!("{test}: needs {}", missing.join(", "));
        println!("SKIPPED {line} ({SKIP_TOOL_TESTS}=1)");
        eprintln!("SKIPPED {line} ({SKIP_TOOL_TESTS}=1)");
        record_skip(&line);
        return false;
    }
    install_tools_once(&missing_tools(names));
    let missing = missing_tools(names);
    assert!(
        missing.is_empty(),
        "this test needs {} and `cargo xtask tools` did not install it: run `cargo xtask tools` \
         and see what it says (or set {SKIP_TOOL_TESTS}=1 to skip tests that need tools)",
        missing.join(", ")
    );
    true
}

fn missing_tools<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let path = tools_path();
    names.iter().copied().filter(|n| find_on(&path, n).is_none()).collect()
}

/// Runs `xtask tools` once per test process; every later caller waits for
/// that one run and sees its outcome.
fn install_tools_once(missing: &[&str]) {
    static DONE: std::sync::Mutex<Option<Result<(), String>>> = std::sync::Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if done.is_none() {
        eprintln!("installing the pinned tools for the tests: `cargo xtask tools`");
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .arg("tools")
            .env("XTASK_PROJECT_ROOT", repo_root())
            .stdin(Stdio::null())
            .output();
        *done = Some(match out {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => Err(e.to_string()),
        });
    }
    if let Some(Err(why)) = done.as_ref() {
        panic!(
            "this test needs {}, and `cargo xtask tools` failed:\n{why}\nRun `cargo xtask tools` to see \
             why, or set {SKIP_TOOL_TESTS}=1 to skip tests that need tools",
            missing.join(", ")
        );
    }
}

/// Appends one skipped test to the skip log.
fn record_skip(line: &str) {
    let log = std::env::var_os(SKIP_LOG)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/tool-test-skips.txt"));
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&log) {
        let _ = writeln!(f, "{line}");
    }
}

/// A loopback port free at the time of asking.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh folder under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "xtask-it-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `bao server -dev` on a free loopback port, stopped on drop.
pub(crate) struct OpenBao {
    child: Child,
    pub addr: String,
    pub port: u16,
    pub token: String,
    /// With `start_tls`: the CA file of the server's self-signed certificate.
    pub ca_cert: Option<PathBuf>,
    _dir: TempDir,
}

impl OpenBao {
    pub(crate) fn start() -> OpenBao {
        OpenBao::start_with(false)
    }

    /// `bao server -dev -dev-tls`: HTTPS with a CA of its own.
    pub(crate) fn start_tls() -> OpenBao {
        OpenBao::start_with(true)
    }

    fn start_with(tls: bool) -> OpenBao {
        for _ in 0..3 {
            let dir = TempDir::new("bao");
            let port = free_port();
            let token = format!("root-{port}");
            let log = std::fs::File::create(dir.0.join("bao.log")).unwrap();
            let certs = dir.0.join("tls");
            let mut cmd = Command::new(find_on(&tools_path(), "bao").expect("bao is installed"));
            cmd.args(["server", "-dev", &format!("-dev-root-token-id={token}")])
                .arg(format!("-dev-listen-address=127.0.0.1:{port}"));
            if tls {
                std::fs::create_dir_all(&certs).unwrap();
                cmd.arg("-dev-tls").arg(format!("-dev-tls-cert-dir={}", certs.display()));
            }
            let child = cmd
                .env("HOME", &dir.0)
                .env_remove("VAULT_ADDR")
                .env_remove("BAO_ADDR")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting bao");
            let mut bao = OpenBao {
                child,
                addr: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
                port,
                token,
                ca_cert: tls.then(|| certs.join("vault-ca.pem")),
                _dir: dir,
            };
            if bao.wait_healthy(Duration::from_secs(10)) {
                return bao;
            }
        }
        panic!("OpenBao did not become healthy on three ports");
    }

    fn wait_healthy(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            match &self.ca_cert {
                // TLS: ready once it listens and has written its CA.
                Some(ca) if ca.exists() && TcpStream::connect(("127.0.0.1", self.port)).is_ok() => {
                    std::thread::sleep(Duration::from_millis(300));
                    return true;
                }
                Some(_) => {}
                None if http_status(self.port, "/v1/sys/health") == Some(200) => return true,
                None => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Runs the bao CLI against this server.
    pub(crate) fn bao(&self, args: &[&str]) -> std::process::Output {
        Command::new(find_on(&tools_path(), "bao").unwrap())
            .args(args)
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", &self.token)
            .env("HOME", &self._dir.0)
            .output()
            .unwrap()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server (for fault tests).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `VAULT_ADDR` and `VAULT_TOKEN` for this server, for `xtask_env`.
    pub(crate) fn env(&self) -> [(&'static str, &str); 2] {
        [("VAULT_ADDR", &self.addr), ("VAULT_TOKEN", &self.token)]
    }

    /// Sets `secret/<name>`'s `value` through vaultrs, as a person editing
    /// the store by hand would.
    pub(crate) fn hand_edit(&self, name: &str, value: &str) {
        let data = std::collections::HashMap::from([("value", value)]);
        block_on(vaultrs::kv2::set(&self.client(), "secret", name, &data)).unwrap();
    }

    /// A vaultrs client: an independent reader of what the seed wrote.
    pub(crate) fn client(&self) -> vaultrs::client::VaultClient {
        vault_client(&self.addr, &self.token)
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP status of a GET on loopback, by hand (no client to trust).
pub(crate) fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
}

/// A block_on for vaultrs calls in tests.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// The result of one `xtask` run.
#[derive(Debug)]
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub(crate) fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub(crate) fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub(crate) fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<std::process::Output> for Run {
    fn from(out: std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The real OpenBao dev server and a fresh sandbox, or `None` (skip the
/// test) when `bao` is missing.
pub(crate) fn with_bao() -> Option<(OpenBao, Sandbox)> {
    require_tools(&["bao", "kubectl"]).then(|| (OpenBao::start(), Sandbox::new()))
}

/// Fails the test unless `text` contains `needle`, showing both.
#[track_caller]
pub(crate) fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

/// A run's standard output as JSON (`--output json`).
pub(crate) fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.all()))
}

/// The sandbox's shipped fixtures, name to value.
pub(crate) fn fixtures(sb: &Sandbox) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(&sb.read("scripts/azure/default-local-keyvault-secrets.json")).unwrap()
}

/// sha256 in hex, computed here rather than by the code under test.
pub(crate) fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What output shows of `value` in `sb`: 8 hex digits of HMAC-SHA256 keyed with the
/// sandbox's `.local/secrets/checksum-key.json`, over `checksum NUL <sha256 of value>`.
pub(crate) fn shown_checksum(sb: &Sandbox, value: &str) -> String {
    use hmac::Mac;
    let entry: serde_json::Value =
        serde_json::from_str(&sb.read(".local/secrets/checksum-key.json")).unwrap();
    let key = entry["key"].as_str().unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(b"checksum\0");
    mac.update(sha256_hex(value).as_bytes());
    mac.finalize().into_bytes()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// `secrets seed --provider vault --output json` against `addr`.
pub(crate) fn vault_seed(sb: &Sandbox, addr: &str, token: &str, extra: &[&str]) -> Run {
    let mut args = vec!["secrets", "seed", "--provider", "vault", "--output", "json"];
    args.extend_from_slice(extra);
    sb.xtask_env(&args, &[("VAULT_ADDR", addr), ("VAULT_TOKEN", token)])
}

/// One call a fake recorded.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Call {
    pub tool: String,
    pub argv: Vec<String>,
    pub stdin: String,
    /// The token variables (names) the tool found in its environment.
    #[serde(default)]
    pub env: Vec<String>,
}

/// Whether process `pid` still runs (a zombie does not count).
pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// A scratch git copy of the repository with fakes on PATH.
pub(crate) struct Sandbox {
    pub root: PathBuf,
    pub fake_dir: PathBuf,
    pub home: PathBuf,
    /// The cluster stand-in, once a scenario describes a cluster.
    cluster: std::sync::OnceLock<crate::cluster::Cluster>,
    _dir: TempDir,
}

impl Sandbox {
    pub(crate) fn new() -> Sandbox {
        let dir = TempDir::new("repo");
        let root = dir.0.join("repo");
        let fake_dir = dir.0.join("fake");
        let home = dir.0.join("home");
        for d in [&root, &fake_dir, &home] {
            std::fs::create_dir_all(d).unwrap();
        }
        // Real kubectl has a context only with a kubeconfig, and the seed
        // asks it only then: a scenario's cluster writes one with a context.
        std::fs::create_dir_all(home.join(".kube")).unwrap();
        std::fs::write(
            home.join(".kube/config"),
            "# no context until a scenario describes a cluster\n",
        )
        .unwrap();
        let src = repo_root();
        for item in ["infra", "scripts", "fixtures", ".gitignore", "secrets.toml"] {
            if src.join(item).exists() {
                let ok =
                    Command::new("cp").arg("-R").arg(src.join(item)).arg(&root).status().unwrap();
                assert!(ok.success());
            }
        }
        let git = |args: &[&str]| {
            let out = Command::new("git").args(args).current_dir(&root).output().unwrap();
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        git(&["init", "-q"]);
        git(&["-c", "user.name=t", "-c", "user.email=t@t.invalid", "add", "-A"]);
        git(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t.invalid",
            "commit",
            "-q",
            "-m",
            "scratch",
        ]);
        Sandbox { root, fake_dir, home, cluster: std::sync::OnceLock::new(), _dir: dir }
    }

    /// What the fakes (helmfile sync, az) replay, and the cluster that the
    /// real kubectl finds: the `kubectl` part sets up the cluster stand-in
    /// (started on first use) as [`crate::cluster::apply`] describes.
    pub(crate) fn scenario(&self, scenario: serde_json::Value) {
        if scenario["kubectl"].is_object() {
            crate::cluster::apply(self, self.cluster(), &scenario["kubectl"]);
        }
        std::fs::write(self.fake_dir.join("scenario.json"), scenario.to_string()).unwrap();
        for e in std::fs::read_dir(&self.fake_dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("counter-") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }

    /// The sandbox's cluster stand-in, started on first use.
    pub(crate) fn cluster(&self) -> &crate::cluster::Cluster {
        self.cluster.get_or_init(|| crate::cluster::Cluster::start(&self.fake_dir.join("cluster")))
    }

    /// The built `xtask` with `args`, run as [`Sandbox::command_of`] runs
    /// any program.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        self.command_of(Path::new(env!("CARGO_BIN_EXE_xtask")), args)
    }

    /// `program` with `args` in the sandbox: run from its root
    /// (`XTASK_PROJECT_ROOT` too), the fakes and pinned tools on PATH, its
    /// own HOME and helm homes, stdin closed, and none of the caller's
    /// variables that the tool's config or kubectl would read.
    pub(crate) fn command_of(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.root)
            .env("XTASK_PROJECT_ROOT", &self.root)
            .env("PATH", format!("{}:{}", fakes_dir().display(), tools_path()))
            .env("FAKE_DIR", &self.fake_dir)
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG")
            .env("HELM_CACHE_HOME", self.home.join(".cache/helm"))
            .env("HELM_CONFIG_HOME", self.home.join(".config/helm"))
            .env("HELM_DATA_HOME", self.home.join(".local/share/helm"))
            .stdin(Stdio::null());
        for var in [
            "VAULT_ADDR",
            "VAULT_TOKEN",
            "VAULT_NAMESPACE",
            "VAULT_CACERT",
            "SECRETS_PROVIDER",
            "AZURE_KEYVAULT_NAME",
            "EXTERNALSECRET_WAIT_ATTEMPTS",
            "EXTERNALSECRET_WAIT_SLEEP",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// `secrets seed --provider file` with `extra` flags.
    pub(crate) fn seed_file(&self, extra: &[&str]) -> Run {
        let mut args = vec!["secrets", "seed", "--provider", "file"];
        args.extend_from_slice(extra);
        self.xtask(&args)
    }

    pub(crate) fn xtask(&self, args: &[&str]) -> Run {
        self.xtask_env(args, &[])
    }

    pub(crate) fn xtask_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap().into()
    }

    /// Every `kubectl port-forward` started, by pid, in order.
    pub(crate) fn port_forward_pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.fake_dir.join("port-forward.pids"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    /// Every call the fakes recorded, in order.
    pub(crate) fn calls(&self) -> Vec<Call> {
        std::fs::read_to_string(self.fake_dir.join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub(crate) fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub(crate) fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }
}

/// One HTTP request the proxy saw.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    /// How many requests came before this one on its connection.
    pub on_connection: usize,
}

/// What the proxy does with a request. `Reply` with status 0 drops the
/// connection without an answer, as a dead server would.
pub(crate) enum Action {
    Forward,
    /// Close the client's connection without forwarding or answering, as
    /// a server does with a keep-alive connection it deems idle.
    Close,
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

pub(crate) type Hook = std::sync::Arc<dyn Fn(&Request) -> Action + Send + Sync>;

/// A KV v2 data write of a secret (not of the seed's record entry, which
/// the first seed of a mount writes once, before any secret).
pub(crate) fn is_data_write(req: &Request) -> bool {
    req.method == "POST"
        && req.path.starts_with("/v1/secret/data/")
        && req.path != "/v1/secret/data/_cargo-xtask-secrets"
}

/// A proxy in front of `bao` that kills the server (SIGKILL) as data write
/// number `n` (from 0) reaches it, as a crash mid-seed would.
pub(crate) fn killing_at_write(bao: &OpenBao, n: usize) -> Proxy {
    let pid = bao.pid();
    let writes = std::sync::atomic::AtomicUsize::new(0);
    Proxy::start(
        bao.port,
        Arc::new(move |req| {
            if is_data_write(req) && writes.fetch_add(1, Ordering::SeqCst) == n {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                std::thread::sleep(Duration::from_millis(100));
            }
            Action::Forward
        }),
    )
}

/// A proxy in front of `bao` that records `METHOD path` of every request.
pub(crate) fn recording(bao: &OpenBao) -> (Proxy, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let proxy = Proxy::start(
        bao.port,
        Arc::new(move |req| {
            log.lock().unwrap().push(format!("{} {}", req.method, req.path));
            Action::Forward
        }),
    );
    (proxy, seen)
}

/// A loopback HTTP/1.1 proxy in front of a server, with a hook that may
/// act before forwarding (a concurrent edit) or answer itself (429, 503).
pub(crate) struct Proxy {
    pub port: u16,
}

impl Proxy {
    pub(crate) fn start(upstream: u16, hook: Hook) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let hook = hook.clone();
                std::thread::spawn(move || {
                    let _ = serve(client, upstream, hook);
                });
            }
        });
        Proxy { port }
    }

    pub(crate) fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(mut client: TcpStream, upstream: u16, hook: Hook) -> std::io::Result<()> {
    let mut up: Option<TcpStream> = None;
    let mut reader = std::io::BufReader::new(client.try_clone()?);
    for on_connection in 0.. {
        let Some((head, body)) = read_message(&mut reader, true)? else {
            return Ok(());
        };
        let first = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
        let mut parts = first.split_whitespace();
        let req = Request {
            method: parts.next().unwrap_or_default().to_string(),
            path: parts.next().unwrap_or_default().to_string(),
            on_connection,
        };
        match hook(&req) {
            Action::Close => return Ok(()),
            Action::Reply { status, headers, body } => {
                let mut resp =
                    format!("HTTP/1.1 {status} Hooked\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("Content-Type: application/json\r\n\r\n");
                resp.push_str(&body);
                client.write_all(resp.as_bytes())?;
            }
            Action::Forward => {
                if up.is_none() {
                    up = Some(TcpStream::connect(("127.0.0.1", upstream))?);
                }
                let u = up.as_mut().unwrap();
                u.write_all(&head)?;
                u.write_all(&body)?;
                let mut ur = std::io::BufReader::new(u.try_clone()?);
                let Some((rhead, rbody)) = read_message(&mut ur, false)? else {
                    return Ok(());
                };
                // Re-frame the body with a Content-Length (it may have come chunked).
                let text = String::from_utf8_lossy(&rhead).to_string();
                let mut out = String::new();
                for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                    let lower = line.to_ascii_lowercase();
                    if !lower.starts_with("transfer-encoding")
                        && !lower.starts_with("content-length")
                    {
                        out.push_str(line);
                        out.push_str("\r\n");
                    }
                }
                out.push_str(&format!("Content-Length: {}\r\n\r\n", rbody.len()));
                client.write_all(out.as_bytes())?;
                client.write_all(&rbody)?;
            }
        }
    }
    Ok(())
}

/// Reads one HTTP message: head bytes (with the blank line) and the body.
fn read_message<R: std::io::BufRead>(
    r: &mut R,
    request: bool,
) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let header = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()))
    };
    let status_no_body = !request && {
        let code = text.split_whitespace().nth(1).unwrap_or("");
        code == "204" || code == "304" || code.starts_with('1')
    };
    let mut body = Vec::new();
    if status_no_body {
    } else if let Some(len) = header("content-length") {
        body.resize(len.parse().unwrap_or(0), 0);
        r.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(Some((head, body)))
}

/// Starts one `bao server` on Raft storage below `dir` (data, config and
/// log named after `node_id`), its API on `api` and Raft traffic on
/// `cluster`, both on loopback.
pub(crate) fn spawn_raft_node(
    bao: &Path,
    dir: &Path,
    node_id: &str,
    api: u16,
    cluster: u16,
) -> Child {
    let data = dir.join(node_id);
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.join(format!("{node_id}.hcl"));
    std::fs::write(
        &config,
        format!(
            "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"{node_id}\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{api}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{api}\"\ncluster_addr = \"http://127.0.0.1:{cluster}\"\ndisable_mlock = true\n",
            data.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("{node_id}.log"))).unwrap();
    Command::new(bao)
        .arg("server")
        .arg(format!("-config={}", config.display()))
        .env("HOME", dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The bao CLI at `bin` against `addr`, with `token` if any and HOME at
/// `home`.
pub(crate) fn bao_at(
    bin: &Path,
    home: &Path,
    addr: &str,
    token: Option<&str>,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env("VAULT_ADDR", addr).env("HOME", home);
    if let Some(t) = token {
        cmd.env("VAULT_TOKEN", t);
    }
    cmd.output().unwrap()
}

/// Waits for the new OpenBao at `addr` to listen, initialises it with one
/// unseal key, unseals it and waits until it is active. Returns the unseal
/// key and the root token.
pub(crate) fn init_and_unseal(bin: &Path, home: &Path, addr: &str) -> (String, String) {
    let port = port_of(addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    let until = |what: &str, f: &dyn Fn() -> bool| {
        while !f() {
            assert!(Instant::now() < deadline, "OpenBao at {addr}: timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("it to listen", &|| http_status(port, "/v1/sys/health").is_some());
    let init = bao_at(
        bin,
        home,
        addr,
        None,
        &["operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"],
    );
    assert!(init.status.success(), "init: {}", String::from_utf8_lossy(&init.stderr));
    let init: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    let key = init["unseal_keys_b64"][0].as_str().unwrap().to_string();
    let token = init["root_token"].as_str().unwrap().to_string();
    let out = bao_at(bin, home, addr, None, &["operator", "unseal", &key]);
    assert!(out.status.success(), "unseal: {}", String::from_utf8_lossy(&out.stderr));
    until("it to be active", &|| http_status(port, "/v1/sys/health") == Some(200));
    (key, token)
}

/// Enables KV v2 at `secret/` on the OpenBao at `addr`.
pub(crate) fn enable_kv2(bin: &Path, home: &Path, addr: &str, token: &str) {
    let out = bao_at(bin, home, addr, Some(token), &["secrets", "enable", "-path=secret", "kv-v2"]);
    assert!(out.status.success(), "enable kv: {}", String::from_utf8_lossy(&out.stderr));
}

/// A 3-node OpenBao cluster with integrated Raft storage on loopback:
/// init, unseal, `raft join`, all three voters. Stopped on drop.
pub(crate) struct RaftCluster {
    nodes: Vec<Option<Child>>,
    pub addrs: Vec<String>,
    pub token: String,
    _dir: TempDir,
}

impl RaftCluster {
    pub(crate) fn start() -> RaftCluster {
        let dir = TempDir::new("raft");
        let bao = find_on(&tools_path(), "bao").expect("bao is installed");
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..3 {
            let (api, cluster) = (free_port(), free_port());
            let child = spawn_raft_node(&bao, &dir.0, &format!("node{i}"), api, cluster);
            nodes.push(Some(child));
            addrs.push(format!("http://127.0.0.1:{api}"));
        }
        let run = |addr: &str, token: Option<&str>, args: &[&str]| {
            bao_at(&bao, &dir.0, addr, token, args)
        };
        let until = |what: &str, f: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !f() {
                assert!(Instant::now() < deadline, "raft cluster: timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        let (key, token) = init_and_unseal(&bao, &dir.0, &addrs[0]);
        // Promote joiners to voters quickly.
        let out = run(
            &addrs[0],
            Some(&token),
            &["operator", "raft", "autopilot", "set-config", "-server-stabilization-time=1s"],
        );
        assert!(out.status.success(), "autopilot: {}", String::from_utf8_lossy(&out.stderr));
        for addr in &addrs[1..] {
            until("a node to listen", &|| http_status(port_of(addr), "/v1/sys/health").is_some());
            let out = run(addr, None, &["operator", "raft", "join", &addrs[0]]);
            assert!(out.status.success(), "join: {}", String::from_utf8_lossy(&out.stderr));
            assert!(run(addr, None, &["operator", "unseal", &key]).status.success());
        }
        until("three voters", &|| {
            let out =
                run(&addrs[0], Some(&token), &["operator", "raft", "list-peers", "-format=json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().is_some_and(|v| {
                v["data"]["config"]["servers"]
                    .as_array()
                    .is_some_and(|s| s.len() == 3 && s.iter().all(|n| n["voter"] == true))
            })
        });
        enable_kv2(&bao, &dir.0, &addrs[0], &token);
        RaftCluster { nodes, addrs, token, _dir: dir }
    }

    /// Index of the active node (sys/health 200).
    pub(crate) fn leader(&self) -> Option<usize> {
        self.addrs.iter().position(|a| http_status(port_of(a), "/v1/sys/health") == Some(200))
    }

    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].as_ref().map(|c| c.id())
    }

    pub(crate) fn client(&self, i: usize) -> vaultrs::client::VaultClient {
        vault_client(&self.addrs[i], &self.token)
    }
}

impl Drop for RaftCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The port of an http://host:port address.
pub(crate) fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// A vaultrs client for `addr`: tests read back through it, not our code.
pub(crate) fn vault_client(addr: &str, token: &str) -> vaultrs::client::VaultClient {
    vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token)
            .build()
            .unwrap(),
    )
    .unwrap()
}
