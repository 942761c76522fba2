//! One `skv-node` child process per case, and the CPU time of processes from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use procfs::process::{Process, Stat};
use procfs::{CpuTime, CurrentSI, KernelStats};

/// How long a node may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of the node's log quoted when it fails.
const LOG_TAIL_LINES: usize = 8;

/// A running `skv-node`. Killed on drop if still running.
#[derive(Debug)]
pub(crate) struct NodeProcess {
    child: Child,
    /// `HOST:PORT` it listens on.
    pub(crate) addr: String,
    log: PathBuf,
}

impl NodeProcess {
    /// Start `bin` with `args` plus `--listen LISTEN`, its stderr appended to `log`, and wait
    /// for its `listening on ADDR` line.
    pub(crate) fn start(
        bin: &Path,
        args: &[String],
        log: &Path,
        listen: &str,
    ) -> Result<NodeProcess, String> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("cannot open the node log {}: {e}", log.display()))?;
        let mut child = Command::new(bin)
            .args(args)
            .args(["--listen", listen])
            // Info level: start and stop lines only; nothing per connection or request.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the node's stdout was not captured".into());
        };
        let (tx, rx) = mpsc::channel();
        // Reads to the end, so the node never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let mut node = NodeProcess {
            child,
            addr: String::new(),
            log: log.to_owned(),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                node.addr = addr;
                Ok(node)
            }
            Err(_) => {
                let status = node.stop();
                Err(format!(
                    "the node did not start ({status}); its log ends with: {}",
                    node.log_tail()
                ))
            }
        }
    }

    /// The node's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// If the node has exited: how.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown state: {e}")),
        }
    }

    /// Kill the node (SIGKILL: its data is thrown away with the case) and reap it; returns
    /// how it ended.
    pub(crate) fn stop(&mut self) -> String {
        if let Some(status) = self.exited() {
            return format!("it had already exited: {status}");
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        }
    }

    /// The last lines of the node's log, on one line.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log, LOG_TAIL_LINES)
    }
}

/// The last `lines` lines of a server's log file, joined on one line for an error message
/// ("(empty)" when there are none).
pub(crate) fn log_tail(log: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join(" | ");
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Clock ticks per second of the times in /proc/PID/stat (`sysconf(_SC_CLK_TCK)`).
pub(crate) fn clock_ticks_per_sec() -> f64 {
    procfs::ticks_per_second() as f64
}

/// User + system CPU time of a process (all its threads), in clock ticks, from
/// `/proc/<pid>/stat` (`pid` "self" for this process). `None` where there is no /proc.
pub(crate) fn cpu_ticks(pid: &str) -> Option<u64> {
    let process = match pid {
        "self" => Process::myself(),
        pid => Process::new(pid.parse().ok()?),
    };
    let stat = process.ok()?.stat().ok()?;
    Some(stat_ticks(&stat))
}

/// Busy time of all CPUs together, in clock ticks: user + nice + system + irq + softirq from
/// the first line of /proc/stat (idle, iowait and steal are not busy).
pub(crate) fn machine_busy_ticks() -> Option<u64> {
    let total = KernelStats::current().ok()?.total;
    Some(busy_ticks(&total))
}

fn busy_ticks(cpu: &CpuTime) -> u64 {
    cpu.user + cpu.nice + cpu.system + cpu.irq.unwrap_or(0) + cpu.softirq.unwrap_or(0)
}

/// utime + stime: this process's own threads, not its reaped children.
fn stat_ticks(stat: &Stat) -> u64 {
    stat.utime + stat.stime
}

#[cfg(test)]
mod tests {
    use super::*;
    use procfs::{FromBufReadSI, FromRead};

    #[test]
    fn stat_lines_parse() {
        // The command name (field 2) may hold spaces and parentheses itself.
        let line = "4242 (skv node (x)) S 1 4242 4242 0 -1 4194560 2870 0 0 0 1234 567 0 0 20 \
                    0 9 0 9000 123456 789 18446744073709551615 94080063979520 94080063999401 \
                    140729334505968 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94080064015408 \
                    94080064017024 94080398573568 140729334512354 140729334512374 \
                    140729334512374 140729334513643 0\n";
        let stat = Stat::from_read(line.as_bytes()).unwrap();
        assert_eq!(stat.comm, "skv node (x)");
        assert_eq!(stat_ticks(&stat), 1234 + 567);
        assert!(Stat::from_read(&b"garbage"[..]).is_err());
        assert!(Stat::from_read(&b"1 (x) S 1 2"[..]).is_err());
    }

    #[test]
    fn machine_busy_time_counts_busy_states_only() {
        let stat =
            "cpu  100 2 30 9999 7 4 5 6 0 0\ncpu0 1 2 3 4 5 6 7\nctxt 1\nbtime 1\nprocesses 1\n";
        let stats =
            KernelStats::from_buf_read(stat.as_bytes(), procfs::current_system_info()).unwrap();
        let cpu = stats.total;
        assert_eq!(busy_ticks(&cpu), 100 + 2 + 30 + 4 + 5);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        if Path::new("/proc/self/stat").exists() {
            assert!(cpu_ticks("self").is_some());
            assert!(machine_busy_ticks().is_some());
        }
        assert!(cpu_ticks("not-a-pid").is_none());
        assert!(clock_ticks_per_sec() > 0.0);
    }
}
