//! One `nats-server` process on free loopback ports with a temporary store.

use crate::monitor;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The environment variable naming the `nats-server` binary to use; it wins over `PATH`.
pub const BIN_ENV: &str = "NATS_SERVER_BIN";

/// What to do when there is no usable `nats-server`; part of every "not found" panic.
pub const INSTALL_HINT: &str = "run `scripts/install-nats-server.sh` from the repository root \
     and `export NATS_SERVER_BIN=<the path it prints last>` (or put nats-server >= 2.10 on PATH)";

/// The oldest server the default lookup accepts; older ones only through
/// [`NatsServerBuilder::binary`].
pub const MIN_VERSION: Version = (2, 10, 0);

/// A server version as `(major, minor, patch)`, e.g. `(2, 15, 1)`; tuples compare as versions do.
pub type Version = (u32, u32, u32);

/// How long a server may take to become healthy unless [`NatsServerBuilder::startup_timeout`]
/// says otherwise. Generous: two cores may be busy compiling while the tests run.
const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How many sets of free ports to try when another process takes one between picking and binding.
const PORT_ATTEMPTS: usize = 5;

/// How many lines of a server's log to print when a test panics while it runs.
const LOG_TAIL_LINES: usize = 80;

/// Finds the `nats-server` binary: the value of [`BIN_ENV`] if set (it must be an executable
/// file), else the first executable `nats-server` in the `PATH` value.
///
/// The environment is passed in rather than read, so that tests can try other values without
/// changing the process's environment. The error says what is missing and what to run
/// ([`INSTALL_HINT`]).
pub fn locate_nats_server(
    nats_server_bin: Option<&OsStr>,
    path: Option<&OsStr>,
) -> Result<PathBuf, String> {
    if let Some(bin) = nats_server_bin.filter(|bin| !bin.is_empty()) {
        let bin = PathBuf::from(bin);
        return if is_executable(&bin) {
            Ok(bin)
        } else {
            Err(format!(
                "{BIN_ENV}={} is not an executable file; {INSTALL_HINT}",
                bin.display()
            ))
        };
    }
    std::env::split_paths(path.unwrap_or_default())
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            format!(
                "no nats-server binary: {BIN_ENV} is not set and there is no nats-server on \
                 PATH; {INSTALL_HINT}"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The binary from the environment, checked to be at least [`MIN_VERSION`]; panics otherwise.
fn default_binary() -> (PathBuf, Version) {
    static DEFAULT: OnceLock<Result<(PathBuf, Version), String>> = OnceLock::new();
    let found = DEFAULT.get_or_init(|| {
        let bin = locate_nats_server(
            std::env::var_os(BIN_ENV).as_deref(),
            std::env::var_os("PATH").as_deref(),
        )?;
        let version = binary_version(&bin)?;
        if version < MIN_VERSION {
            return Err(format!(
                "{} is nats-server {}, older than {}; {INSTALL_HINT}. (An old server can still be \
                 used deliberately through NatsServerBuilder::binary.)",
                bin.display(),
                display_version(version),
                display_version(MIN_VERSION),
            ));
        }
        Ok((bin, version))
    });
    found.clone().unwrap_or_else(|message| panic!("{message}"))
}

/// Runs `bin --version` (once per binary per process) and parses it.
fn binary_version(bin: &Path) -> Result<Version, String> {
    static VERSIONS: OnceLock<Mutex<HashMap<PathBuf, Version>>> = OnceLock::new();
    let versions = VERSIONS.get_or_init(Default::default);
    if let Some(version) = versions.lock().unwrap().get(bin) {
        return Ok(*version);
    }
    let output = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run `{} --version`: {e}; {INSTALL_HINT}",
                bin.display()
            )
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let version = parse_version(&text).ok_or_else(|| {
        format!(
            "`{} --version` printed no version: {text:?}; {INSTALL_HINT}",
            bin.display()
        )
    })?;
    versions.lock().unwrap().insert(bin.to_owned(), version);
    Ok(version)
}

/// Parses `nats-server: v2.15.1` (or `v2.11.0-RC.1`, or `2.9.10`) into a [`Version`].
fn parse_version(text: &str) -> Option<Version> {
    text.split_whitespace().find_map(|word| {
        let word = word.strip_prefix('v').unwrap_or(word);
        let mut numbers = word.split('.').map(|part| {
            let digits = part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len());
            part[..digits].parse::<u32>().ok()
        });
        let major = numbers.next()??;
        let minor = numbers.next()??;
        let patch = numbers.next().flatten().unwrap_or(0);
        Some((major, minor, patch))
    })
}

fn display_version((major, minor, patch): Version) -> String {
    format!("{major}.{minor}.{patch}")
}

/// `count` distinct ports that were free a moment ago on 127.0.0.1.
pub(crate) fn free_ports(count: usize) -> Vec<u16> {
    // Hold every listener until all are picked so the kernel cannot hand out one port twice.
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}

/// Options for starting a [`NatsServer`] (or a [`NatsCluster`](crate::NatsCluster)).
///
/// ```no_run
/// # async fn example() {
/// use eventbus_tests::NatsServer;
/// let server = NatsServer::builder()
///     .config("authorization { user: alice, password: s3cret }")
///     .start()
///     .await;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct NatsServerBuilder {
    pub(crate) binary: Option<PathBuf>,
    pub(crate) args: Vec<OsString>,
    pub(crate) config: Option<String>,
    pub(crate) jetstream: bool,
    pub(crate) startup_timeout: Duration,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        Self {
            binary: None,
            args: Vec::new(),
            config: None,
            jetstream: true,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

impl NatsServerBuilder {
    /// Uses this binary instead of the one from [`BIN_ENV`] or `PATH`, with no minimum version:
    /// for testing against an old server such as Debian's 2.9.10.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Appends one command-line argument; these come after the harness's own, so they win.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends command-line arguments, like [`arg`](Self::arg).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts the server with this configuration file text (`-c`), e.g. `authorization { token:
    /// s3cret }`. Listen addresses, ports, JetStream and the store come from the harness's flags,
    /// which override the file.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// Whether to enable JetStream (`-js`); on by default.
    pub fn jetstream(mut self, enabled: bool) -> Self {
        self.jetstream = enabled;
        self
    }

    /// How long a start may take before the harness gives up (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts one server and waits until it is healthy. Panics, with the server's log, if it
    /// does not become healthy in time.
    pub async fn start(self) -> NatsServer {
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let [client, monitor] = free_ports(2)[..] else {
                unreachable!()
            };
            let ports = Ports {
                client,
                monitor,
                cluster: None,
            };
            let mut server = self.prepare("nats-test", ports, None);
            server.spawn();
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(StartError::PortTaken(log)) => last_failure = log,
                Err(StartError::Failed(message)) => panic!("{message}"),
            }
        }
        panic!("nats-server could not bind free ports in {PORT_ATTEMPTS} attempts:\n{last_failure}")
    }

    /// Starts a cluster of `size` servers; see [`NatsCluster::start`](crate::NatsCluster::start).
    pub async fn start_cluster(self, size: usize) -> crate::NatsCluster {
        crate::cluster::start(self, size).await
    }

    /// A server that is not running yet, in a new temporary directory.
    pub(crate) fn prepare(&self, name: &str, ports: Ports, cluster: Option<&Routes>) -> NatsServer {
        let (binary, version) = match &self.binary {
            Some(bin) => {
                let version = binary_version(bin).unwrap_or_else(|message| panic!("{message}"));
                (bin.clone(), version)
            }
            None => default_binary(),
        };
        let dir = tempfile::Builder::new()
            .prefix("eventbus-nats-")
            .tempdir()
            .expect("create a temporary directory for nats-server");
        let store_dir = dir.path().join("store");
        fs::create_dir(&store_dir).expect("create the store directory");

        let mut args: Vec<OsString> = vec![
            "--addr".into(),
            "127.0.0.1".into(),
            "--port".into(),
            ports.client.to_string().into(),
            "--http_port".into(),
            ports.monitor.to_string().into(),
            "--server_name".into(),
            name.into(),
        ];
        if let Some(text) = &self.config {
            let path = dir.path().join("server.conf");
            fs::write(&path, text).expect("write the server's configuration file");
            args.extend(["--config".into(), path.into_os_string()]);
        }
        if self.jetstream {
            args.extend([
                "--jetstream".into(),
                "--store_dir".into(),
                store_dir.clone().into_os_string(),
            ]);
        }
        if let (Some(routes), Some(cluster_port)) = (cluster, ports.cluster) {
            let urls: Vec<String> = routes
                .ports
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            args.extend([
                "--cluster".into(),
                format!("nats://127.0.0.1:{cluster_port}").into(),
                "--cluster_name".into(),
                routes.cluster_name.as_str().into(),
                "--routes".into(),
                urls.join(",").into(),
            ]);
        }
        args.extend(self.args.iter().cloned());

        NatsServer {
            binary,
            version,
            name: name.to_owned(),
            ports,
            args,
            startup_timeout: self.startup_timeout,
            child: None,
            log_offset: 0,
            log_reported: false,
            store_dir,
            dir,
        }
    }
}

/// The ports one server listens on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ports {
    pub(crate) client: u16,
    pub(crate) monitor: u16,
    pub(crate) cluster: Option<u16>,
}

/// The cluster a server joins: its name and every member's cluster port (its own included).
#[derive(Clone, Debug)]
pub(crate) struct Routes {
    pub(crate) cluster_name: String,
    pub(crate) ports: Vec<u16>,
}

/// Why a start did not produce a healthy server.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The server exited because a port was taken; carries the log. Retry on other ports.
    PortTaken(String),
    /// Anything else; carries a message with the log.
    Failed(String),
}

/// A running `nats-server` (JetStream on by default) on free 127.0.0.1 ports, with its store and
/// log in a temporary directory.
///
/// Dropping it kills the process and removes the directory; if the drop happens because the
/// test panicked, the end of the log is printed to stderr first.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    version: Version,
    name: String,
    ports: Ports,
    args: Vec<OsString>,
    startup_timeout: Duration,
    child: Option<Child>,
    /// Where the current run's output starts in the log file.
    log_offset: u64,
    /// Whether a failed start has put the current run's log into an error already, so that
    /// dropping the server during the resulting panic need not print it again.
    log_reported: bool,
    store_dir: PathBuf,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server with default options (JetStream on) and waits until it is healthy.
    ///
    /// Panics with [`INSTALL_HINT`] when there is no `nats-server` >= 2.10, and with the
    /// server's log when it does not become healthy in time.
    pub async fn start() -> NatsServer {
        Self::builder().start().await
    }

    /// Options for starting a server: configuration text, extra arguments, another binary.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.ports.client
    }

    /// The monitoring (HTTP) port.
    pub fn monitor_port(&self) -> u16 {
        self.ports.monitor
    }

    /// The monitoring URL, `http://127.0.0.1:PORT`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.monitor)
    }

    /// The cluster (route) port, for a member of a [`NatsCluster`](crate::NatsCluster).
    pub fn cluster_port(&self) -> Option<u16> {
        self.ports.cluster
    }

    /// The JetStream store directory (`--store_dir`); it survives [`restart`](Self::restart).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's name (`--server_name`), e.g. `n1` in a cluster.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The binary's version from `nats-server --version`, e.g. `(2, 15, 1)`.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (it may have been stopped, or have exited by itself).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The path of the log file: everything the server wrote to stdout and stderr, over all runs.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The log text over all runs, with a `--- harness:` line before each start.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Connects a client with default options; panics if it cannot.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to nats-server at {}: {e}", self.url()))
    }

    /// `GET`s a JSON monitoring endpoint such as `/jsz?streams=true` or `/connz`.
    pub async fn monitor_json(&self, path: &str) -> Result<serde_json::Value, String> {
        monitor::get_json(self.ports.monitor, path).await
    }

    /// Kills the server with SIGKILL (a real crash, no clean shutdown), then starts it again on
    /// the same ports and store and waits until it is healthy.
    pub async fn restart(&mut self) {
        self.stop();
        self.start_again().await;
    }

    /// Kills the server with SIGKILL and waits for it to exit, keeping the store; does nothing
    /// if it is not running. Start it again with [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it has already exited, which is what we want.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a [`stop`](Self::stop)ped server again on the same ports and store and waits until
    /// it is healthy. Panics if it is running.
    pub async fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "nats-server {} is already running",
            self.name
        );
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            self.spawn();
            match self.wait_ready().await {
                Ok(()) => return,
                // Someone took one of our ports while the server was down; wait for it to go.
                Err(StartError::PortTaken(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(StartError::PortTaken(log)) => {
                    panic!("nats-server {}: its ports stay taken:\n{log}", self.name)
                }
                Err(StartError::Failed(message)) => panic!("{message}"),
            }
        }
    }

    /// Starts the process, appending its output to the log file.
    pub(crate) fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn while running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server's log file");
        self.log_offset = log.metadata().map(|meta| meta.len()).unwrap_or(0);
        self.log_reported = false;
        let command_line =
            self.args
                .iter()
                .fold(format!("{}", self.binary.display()), |mut line, arg| {
                    let _ = write!(line, " {}", arg.to_string_lossy());
                    line
                });
        writeln!(log, "--- harness: starting {command_line}").expect("write the server's log");
        let stdout = log.try_clone().expect("clone the log file handle");
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; {INSTALL_HINT}",
                    self.binary.display()
                )
            });
        self.child = Some(child);
    }

    /// Waits until `/healthz` answers 200 or the process exits or the startup timeout passes.
    ///
    /// In a cluster a node is healthy only once JetStream has a meta leader and the node is
    /// current with it, so every member must have been spawned before waiting on any.
    pub(crate) async fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            let exited = match &mut self.child {
                Some(child) => child.try_wait().expect("query the server process"),
                None => panic!("wait_ready while not running"),
            };
            if let Some(status) = exited {
                self.child = None;
                self.log_reported = true;
                let log = self.current_log();
                if log.contains("address already in use") {
                    return Err(StartError::PortTaken(log));
                }
                return Err(StartError::Failed(format!(
                    "nats-server {} exited during startup ({status}); its log:\n{log}",
                    self.name
                )));
            }
            let last_answer = match monitor::get(self.ports.monitor, "/healthz").await {
                Ok(response) if response.status == 200 => return Ok(()),
                Ok(response) => format!("/healthz: {} {}", response.status, response.body),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                self.log_reported = true;
                return Err(StartError::Failed(format!(
                    "nats-server {} not healthy after {:?} (last: {last_answer}); its log:\n{}",
                    self.name,
                    self.startup_timeout,
                    self.current_log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The log of the current (or last) run.
    fn current_log(&self) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(self.log_offset).unwrap_or(0).min(log.len());
        String::from_utf8_lossy(&log[start..]).into_owned()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() && !self.log_reported {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "--- nats-server {} ({}) log, last {} lines:\n{}\n--- end of nats-server {} log",
                self.name,
                self.url(),
                tail.len(),
                tail.join("\n"),
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("nats-server: v2.12"), Some((2, 12, 0)));
        assert_eq!(parse_version("command not found"), None);
        assert!(parse_version("nats-server: v2.9.10").unwrap() < MIN_VERSION);
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(6);
        let unique: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), 6);
    }
}
