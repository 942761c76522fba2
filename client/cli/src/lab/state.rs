//! DIR/.lab/state.json: what a started world remembers between commands. It holds no secret
//! a checker relies on: the flag is kept only as a salted hash, and editing the file cannot
//! make a lab solved, because `check` replays the student's artifacts against the running
//! nodes and reads their logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::process::ProcRecord;
use super::{Failure, Result};

/// A started world.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct State {
    /// Lab number and folder, so a DIR cannot be checked as another lab.
    pub(crate) lab: u32,
    pub(crate) folder: String,
    /// Unix seconds at `start`.
    pub(crate) started_at: u64,
    /// The flag, as hex SHA-256 of `salt || flag`; the salt is hex.
    pub(crate) flag_salt: String,
    pub(crate) flag_hash: String,
    /// `HOST:PORT` of every node and reserved address, by name.
    pub(crate) addrs: BTreeMap<String, String>,
    /// Node name -> byte length of its log when it was last (re)started, so a checker can
    /// read only what the current run wrote.
    pub(crate) log_offsets: BTreeMap<String, u64>,
    /// Every background process the lab started.
    pub(crate) procs: Vec<ProcRecord>,
    /// How many hints `hint` has revealed.
    pub(crate) hints_shown: usize,
    /// Per-lab values a world or checker needs later (e.g. an expiry time), by name.
    #[serde(default)]
    pub(crate) facts: BTreeMap<String, String>,
}

impl State {
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join(".lab").join("state.json")
    }

    /// The state of the lab in `dir`; a usage error naming `skv lab start` if there is none.
    pub(crate) fn load(dir: &Path) -> Result<State> {
        let path = State::path(dir);
        let text = std::fs::read(&path).map_err(|e| {
            Failure::usage(format!(
                "{} holds no started lab ({}: {e}); run `skv lab start N{}` first",
                dir.display(),
                path.display(),
                dir_flag(dir)
            ))
        })?;
        serde_json::from_slice(&text).map_err(|e| {
            Failure::usage(format!(
                "{}: {e}; `skv lab reset N` rebuilds it",
                path.display()
            ))
        })
    }

    /// Write atomically (a temp file renamed over the old one).
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let path = State::path(dir);
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Failure::usage(format!("cannot encode the lab state: {e}")))?;
        write_file(&path, &json, 0o600)
    }

    pub(crate) fn addr(&self, name: &str) -> Result<&str> {
        self.addrs
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Failure::usage(format!("the lab's world has no address named {name}")))
    }
}

/// ` --dir DIR` unless `dir` is the default place of some lab.
fn dir_flag(dir: &Path) -> String {
    if dir.starts_with("skv-lab") {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    }
}

/// Write `bytes` to `path` with `mode`, creating parent directories, atomically.
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| Failure::usage(format!("cannot create {}: {e}", parent.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Failure::usage(format!("cannot write {}: {e}", path.display()))
    })
}
