//! `cargo xtask bench`: seed and check throughput against a local OpenBao,
//! next to the server's own ceiling. No cluster needed.
//!
//! Each measured run is the real `xtask` binary as a child process (what a
//! developer runs), timed from spawn to exit. Its peak RSS is the child's
//! own `VmHWM`, which it writes to the file named by `XTASK_PEAK_RSS_FILE`
//! as it exits: `wait4`'s `ru_maxrss` would also count the benchmark
//! process itself, whose pages the child holds until its `exec`. The ceiling is a minimal client sending the same number of raw
//! concurrent KV v2 writes (keep-alive, same concurrency) to a fresh mount.
//! Figures go to standard output and `target/bench/results.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::secrets::config::Secret;
use crate::secrets::provider::vault_http::{Method, VaultHttp};
use crate::{flags, project, project_root};

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    secrets: usize,
    wall_ms: f64,
    per_sec: f64,
    peak_rss_mb: f64,
    writes: Option<u64>,
    note: String,
}

pub fn run(flags: &flags::Bench) -> Result<()> {
    let root = project_root();
    let sizes = if flags.secrets.is_empty() {
        vec![1000, 10_000]
    } else {
        flags.secrets.clone()
    };
    let concurrency = flags.concurrency.unwrap_or(16);
    let dir = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root"))?;
    let bao = Bao::start(&root, &dir)?;
    let http = Arc::new(VaultHttp::new(
        &bao.addr,
        Secret::new(bao.token.clone()),
        None,
        Duration::from_secs(30),
        3,
        concurrency,
        None,
    )?);
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    let mut ratios = serde_json::Map::new();

    for &n in &sizes {
        let fixtures = dir.join(format!("fixtures-{n}.json"));
        write_fixtures(&fixtures, n, 0)?;

        // The ceiling: raw concurrent KV v2 writes of the same values, into a
        // fresh mount; with `record`, each followed by the custom_metadata
        // write the seed keeps per secret (the best a recording seed can do).
        let mut ceiling_of = |record: bool, name: &str, note: String| -> Result<Duration> {
            let mount = format!("ceiling-{n}{}", if record { "-recorded" } else { "" });
            enable_kv2(&http, &mount)?;
            let t = Instant::now();
            raw_puts(&http, &mount, n, concurrency, record)?;
            let took = t.elapsed();
            rows.push(Row {
                name: name.into(),
                secrets: n,
                wall_ms: ms(took),
                per_sec: n as f64 / took.as_secs_f64(),
                peak_rss_mb: 0.0,
                writes: Some(if record { 2 * n } else { n } as u64),
                note,
            });
            Ok(took)
        };
        let ceiling = ceiling_of(
            false,
            "server ceiling: raw KV v2 writes",
            format!("{concurrency} in flight, keep-alive, one write per secret"),
        )?;
        let recorded = ceiling_of(
            true,
            "server ceiling: value + record",
            "raw writes as above, each followed by its custom_metadata PATCH (as the seed)".into(),
        )?;

        let mount = format!("seed-{n}");
        enable_kv2(&http, &mount)?;
        let seed = |fixtures: &Path| -> Result<Measured> {
            let conc = concurrency.to_string();
            measure(
                &exe,
                &[
                    "secrets",
                    "seed",
                    "--provider",
                    "vault",
                    "--mount",
                    &mount,
                    "--concurrency",
                    &conc,
                    "--output",
                    "json",
                ],
                fixtures,
                &bao,
                &dir,
            )
        };
        let cold = seed(&fixtures)?;
        rows.push(cold.row(
            "seed from empty",
            n,
            "read (LIST), then value + checksum writes",
        ));
        let noop = seed(&fixtures)?;
        rows.push(noop.row(
            "seed, no-op re-seed",
            n,
            "one paged LIST of detailed metadata, no GET, zero writes",
        ));
        let changed = dir.join(format!("fixtures-{n}-changed.json"));
        write_fixtures(&changed, n, 10)?;
        let ten = seed(&changed)?;
        rows.push(ten.row(
            "seed, 10% changed",
            n,
            "check-and-set updates of the changed tenth",
        ));
        ratios.insert(
            format!("{n}"),
            json!({
                "seed_vs_ceiling_throughput": ceiling.as_secs_f64() / cold.wall.as_secs_f64(),
                "seed_vs_recorded_ceiling_throughput": recorded.as_secs_f64() / cold.wall.as_secs_f64(),
                "seed_writes_per_sec_vs_ceiling": cold.writes.unwrap_or(0) as f64 / cold.wall.as_secs_f64()
                    / (n as f64 / ceiling.as_secs_f64()),
                "noop_vs_cold_time": noop.wall.as_secs_f64() / cold.wall.as_secs_f64(),
                "noop_writes": noop.writes,
                "seed_peak_rss_mb": cold.peak_rss_mb.max(noop.peak_rss_mb).max(ten.peak_rss_mb),
            }),
        );
        // Live check of the same store.
        let infra = dir.join(format!("infra-{n}"));
        write_infra(&infra, n.min(1000), n)?;
        let live = measure(
            &exe,
            &[
                "secrets",
                "check",
                "--live",
                "--provider",
                "vault",
                "--mount",
                &mount,
                "--infra",
                infra.to_str().unwrap(),
                "--quiet",
            ],
            &changed,
            &bao,
            &dir,
        )?;
        rows.push(live.row(
            "check --live",
            n,
            &format!("{} ExternalSecrets against the store", n.min(1000)),
        ));
    }

    // Static check of a synthetic tree of 1,000 ExternalSecrets.
    let infra = dir.join("infra-static");
    write_infra(&infra, 1000, 1000)?;
    let fixtures = dir.join("fixtures-1000.json");
    if !fixtures.exists() {
        write_fixtures(&fixtures, 1000, 0)?;
    }
    let mut best: Option<Measured> = None;
    for _ in 0..5 {
        let m = measure(
            &exe,
            &[
                "secrets",
                "check",
                "--infra",
                infra.to_str().unwrap(),
                "--quiet",
            ],
            &fixtures,
            &bao,
            &dir,
        )?;
        if best.as_ref().is_none_or(|b| m.wall < b.wall) {
            best = Some(m);
        }
    }
    rows.push(best.unwrap().row(
        "check, static",
        1000,
        "1,000 ExternalSecrets, best of 5 (process start included)",
    ));
    let repo = {
        let t = Instant::now();
        let st = std::process::Command::new(&exe)
            .args(["secrets", "check", "--quiet"])
            .env("XTASK_PROJECT_ROOT", &root)
            .output()?;
        if !st.status.success() {
            bail!(
                "the repository's own static check failed: {}",
                String::from_utf8_lossy(&st.stderr)
            );
        }
        t.elapsed()
    };
    rows.push(Row {
        name: "check, static, this repository".into(),
        secrets: 0,
        wall_ms: ms(repo),
        per_sec: 0.0,
        peak_rss_mb: 0.0,
        writes: None,
        note: "process start included".into(),
    });

    // What the seed replaces: a shell loop of `bao kv put`, one process per
    // secret (values on stdin, as the seed would). 100 are enough to see it.
    let loop_n = 100;
    enable_kv2(&http, "shell-loop")?;
    let t = Instant::now();
    for i in 0..loop_n {
        bao.kv_put_via_cli(
            "shell-loop",
            &format!("bench-secret-{i:06}"),
            &bench_value(i, false),
            &dir,
        )?;
    }
    let shell = t.elapsed();
    rows.push(Row {
        name: "shell loop: `bao kv put` per secret".into(),
        secrets: loop_n,
        wall_ms: ms(shell),
        per_sec: loop_n as f64 / shell.as_secs_f64(),
        peak_rss_mb: 0.0,
        writes: Some(loop_n as u64),
        note: "what the seed replaces: one CLI process per secret, in sequence".into(),
    });

    print_table(&rows);
    println!("\nratios (targets in parentheses):");
    for (n, r) in &ratios {
        println!(
            "  {n:>6} secrets: seed throughput / value + record ceiling = {:.2} (>= 0.8; / bare-write ceiling: {:.2}, per request: {:.2}); no-op / cold time = {:.2} (<= 0.3) with {} writes (0); peak RSS {:.1} MB (<= 60)",
            r["seed_vs_recorded_ceiling_throughput"].as_f64().unwrap_or(0.0),
            r["seed_vs_ceiling_throughput"].as_f64().unwrap_or(0.0),
            r["seed_writes_per_sec_vs_ceiling"].as_f64().unwrap_or(0.0),
            r["noop_vs_cold_time"].as_f64().unwrap_or(0.0),
            r["noop_writes"],
            r["seed_peak_rss_mb"].as_f64().unwrap_or(0.0)
        );
    }
    let results = json!({
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "concurrency": concurrency,
        "build": if cfg!(debug_assertions) { "dev" } else { "release" },
        "rows": rows,
        "ratios": ratios,
    });
    let out = dir.join("results.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("\nwrote {}", project::shown(&out));
    Ok(())
}

/// Where a measured child reports its peak RSS (see the module docs).
const PEAK_RSS_ENV: &str = "XTASK_PEAK_RSS_FILE";

/// Writes this process's peak RSS in KiB (`VmHWM`, counted from its `exec`)
/// to the file `XTASK_PEAK_RSS_FILE` names, if it names one.
pub fn report_peak_rss() {
    let Some(path) = std::env::var_os(PEAK_RSS_ENV) else {
        return;
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(kib) = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        let _ = std::fs::write(path, kib.to_string());
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

struct Measured {
    wall: Duration,
    peak_rss_mb: f64,
    writes: Option<u64>,
}

impl Measured {
    fn row(&self, name: &str, n: usize, note: &str) -> Row {
        Row {
            name: name.into(),
            secrets: n,
            wall_ms: ms(self.wall),
            per_sec: n as f64 / self.wall.as_secs_f64(),
            peak_rss_mb: self.peak_rss_mb,
            writes: self.writes,
            note: note.into(),
        }
    }
}

/// Runs the xtask binary, timing it and reading its peak RSS.
fn measure(exe: &Path, args: &[&str], fixtures: &Path, bao: &Bao, dir: &Path) -> Result<Measured> {
    let mut all: Vec<&str> = args.to_vec();
    let f = fixtures.to_str().unwrap();
    all.extend_from_slice(&["--fixtures", f]);
    // Output goes to files: a pipe could fill up while we wait.
    let out_path = dir.join("last-stdout.json");
    let err_path = dir.join("last-stderr.txt");
    let rss_path = dir.join("last-peak-rss-kib");
    let _ = std::fs::remove_file(&rss_path);
    let t = Instant::now();
    let status = std::process::Command::new(exe)
        .args(&all)
        .env("XTASK_PROJECT_ROOT", dir.join("root"))
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", &bao.token)
        .env(PEAK_RSS_ENV, &rss_path)
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .status()?;
    let wall = t.elapsed();
    if !status.success() {
        bail!(
            "`xtask {}` failed ({status}): {}",
            args.join(" "),
            std::fs::read_to_string(&err_path)?
        );
    }
    let stdout = std::fs::read_to_string(&out_path)?;
    let writes = serde_json::from_str::<serde_json::Value>(&stdout)
        .ok()
        .and_then(|v| v["writes"].as_u64());
    let kib: f64 = std::fs::read_to_string(&rss_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .context("the measured run reported no peak RSS (is /proc mounted?)")?;
    Ok(Measured {
        wall,
        peak_rss_mb: kib / 1024.0,
        writes,
    })
}

/// `n` secrets; with `changed_pct`, that share of values differs.
fn write_fixtures(path: &Path, n: usize, changed_pct: usize) -> Result<()> {
    let mut map = serde_json::Map::new();
    for i in 0..n {
        let changed = changed_pct > 0 && i % (100 / changed_pct) == 0;
        map.insert(
            format!("bench-secret-{i:06}"),
            bench_value(i, changed).into(),
        );
    }
    std::fs::write(path, serde_json::to_vec(&map)?)?;
    Ok(())
}

/// The synthetic value of secret `i` (`changed`: its second version).
fn bench_value(i: usize, changed: bool) -> String {
    format!(
        "bench-value-{i:06}-{}-{}",
        if changed { "v2" } else { "v1" },
        "x".repeat(48)
    )
}

/// A synthetic infra tree: `es` ExternalSecrets in values files, referencing
/// keys among the first `keys` secrets.
fn write_infra(dir: &Path, es: usize, keys: usize) -> Result<()> {
    use std::fmt::Write;
    let values = dir.join("values/platform");
    std::fs::create_dir_all(&values)?;
    for file in 0..10 {
        let mut text = String::from("storeName: ameide-vault\nexternalSecrets:\n");
        for i in (file..es).step_by(10) {
            let _ = write!(
                text,
                "  - name: app-{i}\n    namespace: ns-{}\n    target: app-{i}\n    data:\n      - secretKey: password\n        remoteRef:\n          key: bench-secret-{:06}\n          property: value\n",
                i % 7,
                i % keys
            );
        }
        std::fs::write(values.join(format!("bundle-{file}.yaml")), text)?;
    }
    Ok(())
}

fn enable_kv2(http: &VaultHttp, mount: &str) -> Result<()> {
    let reply = http.call(
        Method::Post,
        &format!("sys/mounts/{mount}"),
        Some(&json!({"type": "kv", "options": {"version": "2"}})),
    )?;
    if !(200..300).contains(&reply.status) {
        bail!("enabling {mount}: {}", reply.errors());
    }
    Ok(())
}

/// The ceiling: `n` KV v2 writes with `concurrency` in flight; with
/// `record`, each followed by a `custom_metadata` write as the seed's.
fn raw_puts(
    http: &VaultHttp,
    mount: &str,
    n: usize,
    concurrency: usize,
    record: bool,
) -> Result<()> {
    let results = crate::pool::bounded((0..n).collect(), concurrency, |i| {
        let body = json!({"data": {"value": bench_value(i, false)}});
        let reply = http.call(
            Method::Post,
            &format!("{mount}/data/bench-secret-{i:06}"),
            Some(&body),
        )?;
        if record {
            let custom = json!({"custom_metadata": {"managed-by": "bench",
                "fixture-sha256": "0".repeat(64), "fixture-version": "1"}});
            let meta_path = format!("{mount}/metadata/bench-secret-{i:06}");
            return http.call(Method::Patch, &meta_path, Some(&custom));
        }
        Ok(reply)
    });
    for r in results {
        r.context("a ceiling write failed")?;
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<36} {:>8} {:>11} {:>11} {:>9} {:>7}  note",
        "measurement", "secrets", "wall ms", "per second", "RSS MB", "writes"
    );
    for r in rows {
        println!(
            "{:<36} {:>8} {:>11.1} {:>11.0} {:>9.1} {:>7}  {}",
            r.name,
            r.secrets,
            r.wall_ms,
            r.per_sec,
            r.peak_rss_mb,
            r.writes
                .map(|w| w.to_string())
                .unwrap_or_else(|| "-".into()),
            r.note
        );
    }
}

/// `bao server -dev` on a free loopback port for the benchmark.
struct Bao {
    child: std::process::Child,
    bin: PathBuf,
    addr: String,
    token: String,
}

impl Bao {
    fn start(root: &Path, dir: &Path) -> Result<Bao> {
        let bin: PathBuf = crate::tools::TOOLS
            .iter()
            .find(|t| t.name == "bao")
            .and_then(|t| crate::tools::locate(root, t))
            .map(|f| f.path().to_path_buf())
            .context("bao is not installed: run `cargo xtask tools`")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let token = format!("bench-{port}");
        let log = std::fs::File::create(dir.join("bao.log"))?;
        let child = std::process::Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("HOME", dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let bao = Bao {
            child,
            bin,
            addr: format!("http://127.0.0.1:{port}"),
            token,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                std::thread::sleep(Duration::from_millis(200));
                return Ok(bao);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "OpenBao did not start; see {}",
            dir.join("bao.log").display()
        )
    }
}

impl Bao {
    /// `bao kv put <name> value=-`, the value on standard input.
    fn kv_put_via_cli(&self, mount: &str, name: &str, value: &str, home: &Path) -> Result<()> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = std::process::Command::new(&self.bin)
            .args(["kv", "put", &format!("-mount={mount}"), name, "value=-"])
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", &self.token)
            .env("HOME", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting `bao kv put`")?;
        child
            .stdin
            .take()
            .context("bao's standard input")?
            .write_all(value.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "`bao kv put -mount={mount} {name}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
