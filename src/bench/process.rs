//! The node under test in a process of its own (`threatmesh serve`, this
//! same binary), so that its CPU time and memory are measured apart from
//! the bench's clients (publishers, subscribers), which would otherwise
//! share its runtime, its allocator and its figures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::primitives::{CpuUse, busy_share, cpu_seconds_of, reset_peak_rss_of, rss_mb_of};
use super::{BenchError, err};
use crate::config::Settings;

/// A `threatmesh serve` child process. Killed when dropped, so a failed
/// run leaves no node behind.
pub(super) struct NodeProcess {
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    child: Child,
    /// Its pid, as `/proc` names it.
    proc: String,
}

/// How long a node may take to open its store and bind its port.
const START_WITHIN: Duration = Duration::from_secs(60);

impl NodeProcess {
    /// Starts `settings`' node with the settings of `env` (the variables
    /// the bench's own copy of the settings was loaded with) on a free
    /// loopback port, and waits until it accepts connections.
    pub async fn start(
        settings: &Settings,
        env: &HashMap<String, String>,
    ) -> Result<Self, BenchError> {
        // A port the kernel just handed out and we released: the child
        // binds it a moment later (a race with other programs binding
        // port 0, which the kernel avoids handing out again at once).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(err)?;
        let exe = std::env::current_exe().map_err(err)?;
        // Its log goes to a file beside its config: a pipe nobody reads
        // would block the node once full.
        let log = settings.source.with_extension("log");
        let log_file = std::fs::File::create(&log).map_err(err)?;
        let mut child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(&settings.source)
            .envs(env)
            .env("THREATMESH__NODE__LISTEN", addr.to_string())
            .env("THREATMESH__LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(err)?;
        let proc = child.id().to_string();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().map_err(err)? {
                let why = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(err(format!(
                    "node {} ({}) exited at start ({status}): {}",
                    settings.org_id(),
                    settings.source.display(),
                    why.trim()
                )));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if started.elapsed() > START_WITHIN {
                let _ = child.kill();
                return Err(err(format!(
                    "node {} did not listen on {addr} within {} s",
                    settings.org_id(),
                    START_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { addr, child, proc })
    }

    /// CPU seconds (user, system) the node has used so far.
    pub fn cpu_seconds(&self) -> (f64, f64) {
        cpu_seconds_of(&self.proc)
    }

    /// The node's share of `cores` since `before` (from [`Self::cpu_seconds`])
    /// over `wall` seconds.
    pub fn busy_since(&self, before: (f64, f64), wall: f64, cores: usize) -> CpuUse {
        busy_share(before, self.cpu_seconds(), wall, cores)
    }

    /// The node's resident memory now and at its peak (MB).
    pub fn rss_mb(&self) -> (f64, f64) {
        rss_mb_of(&self.proc)
    }

    /// Starts the node's peak-RSS mark over.
    pub fn reset_peak_rss(&self) {
        reset_peak_rss_of(&self.proc);
    }

    /// Asks the node to shut down (SIGTERM, as an operator would), and
    /// kills it if it has not within 30 s.
    pub async fn stop(mut self) {
        let asked = Command::new("kill")
            .args(["-TERM", &self.proc])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let until = Instant::now() + Duration::from_secs(30);
        while asked && Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
