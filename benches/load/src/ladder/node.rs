//! One `skv-node` child process per case, and the CPU time of processes from /proc.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

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
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ");
        if tail.is_empty() {
            "(empty)".into()
        } else {
            tail
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Clock ticks per second of the times in /proc/PID/stat: `getconf CLK_TCK`, asked once
/// (100 on every common Linux; used if getconf is missing).
pub(crate) fn clock_ticks_per_sec() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// User + system CPU time of a process (all its threads), in clock ticks, from
/// `/proc/<pid>/stat` (`pid` "self" for this process). `None` where there is no /proc.
pub(crate) fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat)
}

/// Busy time of all CPUs together, in clock ticks: user + nice + system + irq + softirq from
/// the first line of /proc/stat (idle, iowait and steal are not busy).
pub(crate) fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(stat.lines().next()?)
}

fn parse_machine_busy(line: &str) -> Option<u64> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?)
}

/// Fields 14 (utime) and 15 (stime) of a /proc stat line. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so counting starts after the last
/// `)`, where field 3 is.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse() {
        let line = "4242 (skv node (x)) S 1 4242 4242 0 -1 4194560 2870 0 0 0 \
                    1234 567 0 0 20 0 9 0 9000 123456 789 18446744073709551615";
        assert_eq!(parse_stat_ticks(line), Some(1234 + 567));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn machine_busy_time_parses() {
        let line = "cpu  100 2 30 9999 7 4 5 6 0 0";
        assert_eq!(parse_machine_busy(line), Some(100 + 2 + 30 + 4 + 5));
        assert_eq!(parse_machine_busy("cpu0 1 2 3 4 5 6 7"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        if Path::new("/proc/self/stat").exists() {
            assert!(cpu_ticks("self").is_some());
        }
        assert!(clock_ticks_per_sec() > 0.0);
    }
}
