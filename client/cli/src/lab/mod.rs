//! `skv lab ...`: security labs. Each lab is a folder `labs/NN-slug/` at the repository root
//! (README.md, lab.toml, check.rs; see labs/README.md). This module owns what every lab
//! shares:
//!
//! - [`spec`]: the `lab.toml` format (title, world, hints, solution);
//! - [`world`]: building a world from it (PKI, issuer, tokens, node configs, seed data) and
//!   starting it; [`state`]: what a started world remembers in `DIR/.lab/state.json`;
//! - [`process`]: background processes a lab starts, recorded by pid AND command line, so
//!   `stop` never signals a recycled pid;
//! - [`check`]: the checker's toolkit (replaying an artifact against a node, reading the audit
//!   log and the node log) and the report `check` prints;
//! - [`sniff`], [`victim`], [`legacy`]: the tools some labs need (a recording TCP relay, a
//!   background application client, a deliberately naive token verifier);
//! - [`registry`]: the list of labs, each compiled in with its lab.toml, README and check.rs.
//!
//! Weak worlds only ever use the node's documented insecure settings: nothing here adds a
//! vulnerable code path to skv-node.

/// `println!` that ignores a closed stdout (`skv lab list | head`): that is the reader's
/// choice, not a failure, and must not panic as `println!` would.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` likewise.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

pub(crate) mod check;
mod grow;
pub(crate) mod legacy;
pub(crate) mod peer;
pub(crate) mod process;
mod registry;
pub(crate) mod sniff;
pub(crate) mod spec;
mod state;
mod victim;
pub(crate) mod world;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use skv_client::exit;

pub(crate) use registry::Lab;

/// Exit code of `check` when the lab is not solved.
const NOT_SOLVED: u8 = 1;

pub(crate) const HELP: &str = "\
Every command takes the lab as N: `3`, `03` or its slug (`rogue-ca`). A lab lives in a
directory, by default ./skv-lab/NN-slug (relative to where you run skv; from inside a lab's
directory, that directory); --dir DIR puts it elsewhere, and then every later command of
that lab needs the same --dir (or to be run from inside DIR).

The path: `skv lab list`, `skv lab start 1`, read DIR/README.md, attack, `skv lab check 1`,
`skv lab hint 1` when stuck, `skv lab stop 1` when done. labs/README.md in the repository
describes every lab and how checking works.

Exit codes:
  0  ok (`check`: solved)
  1  `check`: not solved yet (the report says what is missing)
  2  usage error: unknown lab, DIR holds no started lab, unreadable files
  4  a node of the lab did not start";

/// `skv lab` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum LabCommand {
    /// List the labs: number, slug, rough time and what each teaches.
    List,
    /// Build the lab's world in DIR (PKI, tokens, node configs, data, a copy of its README)
    /// and start its nodes. Refused if DIR already holds a started lab: use `reset`.
    Start(LabArgs),
    /// Reveal the next hint (one more each time; the count is kept in DIR).
    Hint(LabArgs),
    /// Say whether the lab is solved; if not, what is still missing. Replays your artifacts
    /// (token, capture, certificate, config) against the running world. Exit 0 solved, 1 not.
    Check(LabArgs),
    /// Print a worked solution as shell commands (run them from any directory).
    Solution(LabArgs),
    /// Restart the lab's nodes from their configs in DIR/nodes (after you edited one), keeping
    /// their data.
    Restart(LabArgs),
    /// Stop everything, wipe DIR and start the lab afresh (new secrets).
    Reset(LabArgs),
    /// Stop every process the lab started (all labs under ./skv-lab without N or --dir).
    Stop(StopArgs),
    /// A TCP relay that records every byte both ways: listen on ADDR, forward to ADDR, write
    /// what passes to FILE (see labs/01-sniff). Runs until Ctrl-C, or for --for SECS.
    Sniff(SniffArgs),
    /// Write a JWT with the header and claims you give, signed as you say (or not at all).
    /// A lab tool for forging tokens; a real issuer is `skv token issue`.
    ForgeJwt(legacy::ForgeArgs),
    /// Ask the lab's legacy service, a deliberately naive hand-rolled token verifier, what it
    /// makes of a token (labs 05 and 06).
    LegacyVerify(LegacyVerifyArgs),
    /// Send one node-to-node request (a map proposal, a Raft vote) with the certificate and
    /// token you give, and print what the node answers (lab 12). Exit 0 accepted, 3 refused.
    PeerCall(peer::PeerCallArgs),
    /// Each shard's Raft leader and term, as the lab's running nodes report them (labs with a
    /// replicated cluster). A node that does not answer within 2 s is left out.
    Leaders(LabArgs),
    /// Start the lab's spare node and add it to the running cluster's map (lab 13). It
    /// serves no slots until `rebalance`.
    AddNode(LabArgs),
    /// Move slots so every node of the lab's cluster serves a fair share, one move at a
    /// time, while the cluster keeps serving (lab 13).
    Rebalance(LabArgs),
    /// The lab's background application (started by `start`; not for you to run).
    #[command(hide = true)]
    Victim(DirArg),
}

/// The lab and where it lives.
#[derive(Debug, Args)]
pub(crate) struct LabArgs {
    /// The lab: number (`3`, `03`) or slug.
    #[arg(value_name = "N")]
    pub(crate) lab: String,
    /// The lab's directory [default: ./skv-lab/NN-slug].
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

/// `stop`: one lab, or every lab under ./skv-lab.
#[derive(Debug, Args)]
pub(crate) struct StopArgs {
    /// The lab: number or slug [default: every lab under ./skv-lab].
    #[arg(value_name = "N")]
    pub(crate) lab: Option<String>,
    /// The lab's directory [default: ./skv-lab/NN-slug].
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

/// A lab directory only.
#[derive(Debug, Args)]
pub(crate) struct DirArg {
    /// The lab's directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
}

/// `sniff`.
#[derive(Debug, Args)]
pub(crate) struct SniffArgs {
    /// Address to accept connections on, HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: String,
    /// Address to relay them to, HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    pub(crate) to: String,
    /// Capture file (overwritten).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Stop after this many seconds [default: run until Ctrl-C].
    #[arg(long = "for", value_name = "SECS")]
    pub(crate) for_secs: Option<u64>,
    /// Stop recording (but keep relaying) once the file holds this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = sniff::DEFAULT_MAX_BYTES)]
    pub(crate) max_bytes: u64,
}

/// `legacy-verify`.
#[derive(Debug, Args)]
pub(crate) struct LegacyVerifyArgs {
    /// The lab: number or slug.
    #[arg(value_name = "N")]
    pub(crate) lab: String,
    /// File holding the token.
    #[arg(value_name = "TOKEN_FILE")]
    pub(crate) token_file: PathBuf,
    /// The lab's directory [default: ./skv-lab/NN-slug].
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

/// Why a lab command failed: one line for stderr and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    pub(crate) fn connection(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::CONNECTION,
            message: message.into(),
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, Failure>;

pub(crate) fn run(cmd: LabCommand, json: bool) -> u8 {
    let (name, result) = match cmd {
        LabCommand::List => ("list", list(json)),
        LabCommand::Start(a) => ("start", with_lab(&a, world::start)),
        LabCommand::Hint(a) => ("hint", with_lab(&a, hint)),
        LabCommand::Check(a) => ("check", with_lab(&a, |lab, dir| check::run(lab, dir, json))),
        LabCommand::Solution(a) => ("solution", with_lab(&a, solution)),
        LabCommand::Restart(a) => ("restart", with_lab(&a, world::restart)),
        LabCommand::Reset(a) => ("reset", with_lab(&a, world::reset)),
        LabCommand::Stop(a) => ("stop", stop(&a)),
        LabCommand::Sniff(a) => ("sniff", sniff::run(&a)),
        LabCommand::ForgeJwt(a) => ("forge-jwt", legacy::forge(&a)),
        LabCommand::LegacyVerify(a) => (
            "legacy-verify",
            find(&a.lab).and_then(|lab| {
                let dir = lab_dir(lab, a.dir.as_deref());
                legacy::verify_command(lab, &dir, &a.token_file)
            }),
        ),
        LabCommand::PeerCall(a) => ("peer-call", peer::run(&a)),
        LabCommand::Leaders(a) => ("leaders", with_lab(&a, check::leaders_command)),
        LabCommand::AddNode(a) => ("add-node", with_lab(&a, grow::add_node)),
        LabCommand::Rebalance(a) => ("rebalance", with_lab(&a, grow::rebalance)),
        LabCommand::Victim(a) => ("victim", victim::run(&a.dir)),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("skv lab {name}: {}", failure.message);
            failure.code
        }
    }
}

/// Resolve the lab and its directory, then run `f`.
fn with_lab(args: &LabArgs, f: impl FnOnce(&'static Lab, &Path) -> Result<u8>) -> Result<u8> {
    let lab = find(&args.lab)?;
    let dir = lab_dir(lab, args.dir.as_deref());
    f(lab, &dir)
}

/// The lab named `n`: a number (`3`, `03`) or a slug.
pub(crate) fn find(n: &str) -> Result<&'static Lab> {
    let n = n.trim();
    let by_number = n.parse::<u32>().ok();
    registry::labs()
        .iter()
        .find(|lab| Some(lab.number) == by_number || lab.slug() == n || lab.folder == n)
        .ok_or_else(|| {
            Failure::usage(format!(
                "no lab {n:?}; `skv lab list` shows them (give a number such as 3, or a slug)"
            ))
        })
}

/// `--dir`, else the current directory when it is this lab's DIR (a student who did
/// `cd DIR`), else `./skv-lab/NN-slug`.
pub(crate) fn lab_dir(lab: &Lab, dir: Option<&Path>) -> PathBuf {
    if let Some(dir) = dir {
        return dir.to_owned();
    }
    let here = Path::new(".");
    if state::State::load(here).is_ok_and(|s| s.lab == lab.number) {
        return here.to_owned();
    }
    Path::new("skv-lab").join(lab.folder)
}

fn list(json: bool) -> Result<u8> {
    let labs = registry::labs();
    if json {
        let rows: Vec<serde_json::Value> = labs
            .iter()
            .map(|lab| {
                serde_json::json!({
                    "number": lab.number,
                    "slug": lab.slug(),
                    "title": lab.spec().title,
                    "summary": lab.spec().summary,
                    "minutes": lab.spec().minutes,
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(rows));
        return Ok(exit::OK);
    }
    for lab in labs {
        let spec = lab.spec();
        outln!(
            "{:02}  {:<20} ~{:>2} min  {}",
            lab.number,
            lab.slug(),
            spec.minutes,
            spec.title
        );
        outln!("    {}", spec.summary);
    }
    outln!("\nstart one: skv lab start N   (then read ./skv-lab/NN-slug/README.md)");
    Ok(exit::OK)
}

fn hint(lab: &'static Lab, dir: &Path) -> Result<u8> {
    let spec = lab.spec();
    let mut state = state::State::load(dir)?;
    if spec.hints.is_empty() {
        outln!("lab {:02} has no hints", lab.number);
        return Ok(exit::OK);
    }
    let shown = state.hints_shown.min(spec.hints.len());
    if shown == spec.hints.len() {
        outln!(
            "no more hints ({} of {} shown); `skv lab solution {}` prints a worked solution",
            shown,
            spec.hints.len(),
            lab.number
        );
    } else {
        state.hints_shown = shown + 1;
        state.save(dir)?;
    }
    for (i, text) in spec.hints.iter().take(state.hints_shown).enumerate() {
        outln!("hint {}/{}: {}", i + 1, spec.hints.len(), text.trim());
    }
    Ok(exit::OK)
}

fn solution(lab: &'static Lab, dir: &Path) -> Result<u8> {
    let spec = lab.spec();
    // Absolute, so the script works from anywhere.
    let shown_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    outln!(
        "# Lab {:02} ({}): a worked solution. Spoiler: try `skv lab hint {}` first.",
        lab.number,
        lab.slug(),
        lab.number
    );
    outln!("set -eu");
    outln!("cd {}", shell_quote(&shown_dir.display().to_string()));
    outln!("# The world's addresses as shell variables (written by `skv lab start`).");
    outln!(". ./world.env");
    out!("{}", spec.solution.trim_start());
    if !spec.solution.ends_with('\n') {
        outln!();
    }
    Ok(exit::OK)
}

fn stop(args: &StopArgs) -> Result<u8> {
    let dirs: Vec<PathBuf> = match (&args.lab, &args.dir) {
        (_, Some(dir)) => vec![dir.clone()],
        (Some(n), None) => vec![lab_dir(find(n)?, None)],
        (None, None) => {
            let root = Path::new("skv-lab");
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| state::State::path(p).is_file())
                        .collect()
                })
                .unwrap_or_default();
            dirs.sort();
            if dirs.is_empty() {
                outln!("no started lab under {}", root.display());
            }
            dirs
        }
    };
    for dir in dirs {
        world::stop_all(&dir)?;
    }
    Ok(exit::OK)
}

/// `s` quoted for a POSIX shell when it needs it.
pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:+=@,".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labs_are_found_by_number_padded_number_or_slug() {
        assert_eq!(find("1").unwrap().number, 1);
        assert_eq!(find("01").unwrap().number, 1);
        assert_eq!(find("sniff").unwrap().number, 1);
        assert_eq!(find("01-sniff").unwrap().number, 1);
        assert!(find("99").is_err());
        assert!(find("nope").is_err());
    }

    #[test]
    fn every_lab_toml_parses_and_numbers_are_unique() {
        let labs = registry::labs();
        for lab in labs {
            let spec = lab.spec();
            assert!(!spec.title.is_empty(), "lab {}", lab.number);
            assert!(!spec.hints.is_empty(), "lab {} has no hints", lab.number);
            assert!(spec.docs.starts_with("docs/"), "lab {}", lab.number);
            assert!(lab.folder.starts_with(&format!("{:02}-", lab.number)));
            spec.world.validate().unwrap();
            assert!(
                !lab.readme.contains("## Hints"),
                "lab {}: hints live in lab.toml",
                lab.number
            );
        }
        let mut numbers: Vec<u32> = labs.iter().map(|l| l.number).collect();
        numbers.dedup();
        assert_eq!(numbers.len(), labs.len());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/tmp/a-b"), "/tmp/a-b");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
