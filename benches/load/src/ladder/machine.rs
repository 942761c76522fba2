//! What machine the ladder ran on, and when: the report's header.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use procfs::Current;
use serde::Serialize;
use time::OffsetDateTime;

/// The machine, as far as /proc and uname(2) tell.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs this process may use.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `MemTotal` from /proc/meminfo, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Look at this machine. What cannot be read (no /proc, an unusual format) is `unknown`
    /// or 0: the report says what it knows rather than failing the run.
    pub fn detect() -> Machine {
        let cpu_model = procfs::CpuInfo::current()
            .ok()
            .and_then(|info| info.model_name(0).map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let memory_bytes = procfs::Meminfo::current().map_or(0, |m| m.mem_total);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: memory_bytes as f64 / f64::from(1u32 << 30),
            kernel: nix::sys::utsname::uname()
                .ok()
                .and_then(|u| u.release().to_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".into()),
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "{} logical CPUs ({}), {:.1} GiB memory, Linux {}",
            self.cpus, self.cpu_model, self.memory_gib, self.kernel
        )
    }
}

/// The file system type `path` lives on (from /proc/mounts; the longest matching mount
/// point), e.g. `ext4` or `tmpfs`. Durable writes mean nothing on tmpfs, so the report says.
pub(crate) fn filesystem_of(path: &Path) -> Option<String> {
    let mounts = procfs::mounts().ok()?;
    let path = path.canonicalize().ok()?;
    mounts
        .into_iter()
        .filter(|m| path.starts_with(&m.fs_file))
        .max_by_key(|m| m.fs_file.len())
        .map(|m| m.fs_vfstype)
}

/// The 1, 5 and 15-minute load averages, e.g. `0.12 0.30 0.25`.
pub(crate) fn load_average() -> String {
    procfs::LoadAverage::current().map_or_else(
        |_| "unknown".into(),
        |l| format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen),
    )
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

fn utc(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13 UTC");
    }

    #[test]
    fn machine_is_described() {
        let m = Machine::detect();
        assert!(m.cpus >= 1);
        assert!(m.describe().contains("logical CPUs"));
    }
}
