//! Background processes of a lab (its nodes, its victim): started in their own process
//! group with their output in a log, and recorded by pid AND full command line in the lab's
//! state. A process counts as ours only while /proc/PID/cmdline still equals the recorded
//! command line, so `stop` never signals a recycled pid (the same rule as `skv cluster`,
//! client/cli/src/cluster/process.rs).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{Failure, Result};

/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// One started process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcRecord {
    /// What it is: a node name, or `victim`.
    pub(crate) name: String,
    pub(crate) pid: u32,
    /// argv as started (argv[0] is the absolute program path).
    pub(crate) cmdline: Vec<String>,
}

/// Start `program args...` in `cwd` with stdout and stderr appended to `log`.
///
/// The `Child` comes back too: while this `skv` waits for a process it just started, only
/// `Child::try_wait` says for sure whether it died. /proc can show an empty command line for
/// a moment after `spawn` returns (the kernel releases the parent during `execve`, before it
/// records where the new arguments live), and [`is_alive`] would call that process dead.
/// Dropping the `Child` leaves the process running.
pub(crate) fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    cwd: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> Result<(ProcRecord, Child)> {
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::usage(format!("cannot create {}: {e}", parent.display())))?;
    }
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Failure::usage(format!("cannot open {}: {e}", log.display())))
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        // Its own process group: a Ctrl-C in the student's terminal must not stop the world.
        .process_group(0)
        .env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .map_err(|e| Failure::usage(format!("cannot start {} ({name}): {e}", program.display())))?;
    let mut cmdline = vec![program.display().to_string()];
    cmdline.extend(args.iter().cloned());
    let rec = ProcRecord {
        name: name.to_owned(),
        pid: child.id(),
        cmdline,
    };
    Ok((rec, child))
}

/// Whether `rec` still names a live process with the recorded command line.
pub(crate) fn is_alive(rec: &ProcRecord) -> bool {
    let Ok(pid) = i32::try_from(rec.pid) else {
        return false;
    };
    procfs::process::Process::new(pid)
        .and_then(|p| p.cmdline())
        .is_ok_and(|cmdline| cmdline == rec.cmdline)
}

/// Stop `rec` if it is still ours: SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]. Returns
/// whether it was running.
pub(crate) fn stop(rec: &ProcRecord) -> Result<bool> {
    if !is_alive(rec) {
        return Ok(false);
    }
    let pid = Pid::from_raw(i32::try_from(rec.pid).unwrap_or(i32::MAX));
    let _ = signal::kill(pid, Signal::SIGTERM);
    // A node frozen with `kill -STOP` (lab 15) only acts on the SIGTERM once it runs again.
    let _ = signal::kill(pid, Signal::SIGCONT);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while is_alive(rec) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_alive(rec) {
        let _ = signal::kill(pid, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(200));
        if is_alive(rec) {
            return Err(Failure::usage(format!(
                "{} (pid {}) did not stop, even on SIGKILL",
                rec.name, rec.pid
            )));
        }
    }
    Ok(true)
}

/// The binary `name` (`skv-node`) next to this `skv`, else on PATH.
pub(crate) fn sibling_binary(name: &str) -> Result<std::path::PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(on_path).ok_or_else(|| {
        Failure::usage(format!(
            "cannot find {name} next to this skv or on PATH; build it with `cargo build --bins`"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_pid_with_another_command_line_is_not_ours() {
        let me = std::process::id();
        let real = procfs::process::Process::new(me as i32)
            .unwrap()
            .cmdline()
            .unwrap();
        let ours = ProcRecord {
            name: "self".into(),
            pid: me,
            cmdline: real.clone(),
        };
        assert!(is_alive(&ours));
        let recycled = ProcRecord {
            cmdline: vec!["/usr/bin/skv-node".into(), "--config".into(), "x".into()],
            ..ours
        };
        assert!(!is_alive(&recycled));
        assert!(
            !stop(&recycled).unwrap(),
            "a foreign process is never signalled"
        );
    }
}
