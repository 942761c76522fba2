//! Driving `skv lab` as a student would: a lab started in a temp dir with the real `skv`
//! binary, shell steps run by bash from the lab's directory (with `world.env` sourced and the
//! binaries on PATH), `skv lab check --json` parsed, and the lab stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};

use crate::{bin, code, skv, strs};

/// A started lab in its own temp dir. Stopped (`skv lab stop`) on drop.
#[derive(Debug)]
pub struct LabRun {
    /// The lab, as `skv lab` takes it (`1`, `sniff`).
    pub lab: String,
    root: tempfile::TempDir,
}

/// What `skv lab check --json` said.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The exit code (0 solved, 1 not).
    pub code: i32,
    /// The JSON report.
    pub json: serde_json::Value,
}

impl Verdict {
    /// Whether the lab as a whole is solved.
    pub fn solved(&self) -> bool {
        self.json["solved"] == true
    }

    fn part(&self, name: &str) -> &serde_json::Value {
        self.json["parts"]
            .as_array()
            .and_then(|parts| parts.iter().find(|p| p["name"] == name))
            .unwrap_or(&serde_json::Value::Null)
    }

    /// Whether part `name` ("break it", "fix it") is solved.
    pub fn part_solved(&self, name: &str) -> bool {
        self.part(name)["solved"] == true
    }

    /// The missing-items sentences of part `name`, joined by newlines.
    pub fn missing(&self, name: &str) -> String {
        self.part(name)["missing"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// The notes of part `name`, joined by newlines.
    pub fn notes(&self, name: &str) -> String {
        self.part(name)["notes"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

impl LabRun {
    /// `skv lab start LAB --dir <temp>/lab`.
    pub fn start(lab: &str) -> anyhow::Result<LabRun> {
        let run = LabRun {
            lab: lab.to_owned(),
            root: tempfile::tempdir()?,
        };
        let out = run.lab_cmd("start", &[])?;
        if code(&out) != 0 {
            bail!(
                "skv lab start {lab} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(run)
    }

    /// The lab's directory.
    pub fn dir(&self) -> PathBuf {
        self.root.path().join("lab")
    }

    /// `skv lab CMD LAB --dir DIR EXTRA...`.
    pub fn lab_cmd(&self, cmd: &str, extra: &[&str]) -> anyhow::Result<Output> {
        let mut args = strs(&["lab", cmd, &self.lab, "--dir"]);
        args.push(self.dir().display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        skv(&args, None)
    }

    /// `skv lab check --json`.
    pub fn check(&self) -> anyhow::Result<Verdict> {
        let out = self.lab_cmd("check", &["--json"])?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "check printed no JSON: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok(Verdict {
            code: code(&out),
            json,
        })
    }

    /// Run `script` with `bash -eu` in DIR, after `. ./world.env`, with skv on PATH. Fails
    /// with the script's output if it exits non-zero.
    pub fn shell(&self, script: &str) -> anyhow::Result<String> {
        let out = self.shell_output(&format!(". ./world.env\n{script}"), &self.dir())?;
        if !out.status.success() {
            bail!(
                "script failed ({}):\n{script}\n--- stdout\n{}\n--- stderr\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run the lab's worked solution (`skv lab solution`), as printed, from the temp root.
    pub fn run_solution(&self) -> anyhow::Result<String> {
        let out = self.lab_cmd("solution", &[])?;
        if code(&out) != 0 {
            bail!(
                "skv lab solution failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let script = String::from_utf8(out.stdout)?;
        let out = self.shell_output(&script, self.root.path())?;
        if !out.status.success() {
            bail!(
                "the solution failed ({}):\n{script}\n--- stdout\n{}\n--- stderr\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn shell_output(&self, script: &str, cwd: &Path) -> anyhow::Result<Output> {
        let bin_dir = bin("skv").parent().context("bin dir")?.to_owned();
        let path = match std::env::var_os("PATH") {
            Some(p) => {
                let mut dirs = vec![bin_dir];
                dirs.extend(std::env::split_paths(&p));
                std::env::join_paths(dirs)?
            }
            None => bin_dir.into_os_string(),
        };
        let out = Command::new("bash")
            .args(["-euc", script])
            .current_dir(cwd)
            .env("PATH", path)
            .stdin(Stdio::null())
            .output()
            .context("run bash")?;
        Ok(out)
    }

    /// `skv lab reset`: a fresh world (new secrets) in the same DIR.
    pub fn reset(&self) -> anyhow::Result<()> {
        let out = self.lab_cmd("reset", &[])?;
        if code(&out) != 0 {
            bail!(
                "skv lab reset failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for LabRun {
    fn drop(&mut self) {
        let _ = self.lab_cmd("stop", &[]);
    }
}
