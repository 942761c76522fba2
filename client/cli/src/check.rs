//! `skv check-history FILE`: read a recorded history, check it with `skv_check`, print the
//! verdict. The format and the check are that crate's; this file owns the exit codes and
//! the output.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use clap::Args;
use skv_client::exit;

/// Exit code when the history is not linearizable, or the search could not decide. The
/// data commands use 1 for "not found"; here it means "the check did not pass", the usual
/// meaning of 1 for a checker.
const NOT_LINEARIZABLE: u8 = 1;

pub(crate) const HELP: &str = "\
The file has one JSON object per line, one per operation, as a recorder of concurrent
clients writes them (times in nanoseconds since the history began, on one clock):

  {\"process\":3,\"key\":\"k1\",\"op\":{\"type\":\"cas\",\"expect_version\":41,\"value\":\"p3-7\"},
   \"call_ns\":12004000000,\"ret_ns\":12010000000,
   \"outcome\":{\"type\":\"conflict\",\"current_version\":52}}

op: get | put {value} | delete | cas {expect_version, value} (0: the key must be absent).
outcome: found {found: null | {version, value}} | written {version} | deleted {existed}
  | conflict {current_version} | failed {error} (no effect: ignored)
  | unknown {error} (may have taken effect at any time after call_ns, or never).
A process has one operation in flight; an unknown one is its last. Values written are
unique. Operations that overlap in time may be ordered either way.

Prints the verdict (\"linearizable\", or \"NOT linearizable: ...\" naming the key, the
operations and the kind of anomaly) and counts; --json prints the whole report, with each
unknown write and whether the order found applied it.

Exit codes:
  0  linearizable
  1  not linearizable, or undecided (search budget exhausted)
  2  the file is unreadable, malformed (the error names the line) or not a valid history";

/// Flags of `skv check-history`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The history, JSON lines.
    file: PathBuf,
}

pub(crate) fn run(args: &CheckArgs, json: bool) -> u8 {
    let records = match File::open(&args.file)
        .map_err(skv_check::history::HistoryError::from)
        .and_then(|f| skv_check::history::read_jsonl(BufReader::new(f)))
    {
        Ok(records) => records,
        Err(err) => {
            eprintln!("skv check-history: {}: {err}", args.file.display());
            return exit::USAGE;
        }
    };
    let report = match skv_check::check::check_history(&records) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("skv check-history: {}: {err}", args.file.display());
            return exit::USAGE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("skv check-history: {err}");
                return exit::SERVER;
            }
        }
    } else {
        println!("{report}");
    }
    match report.verdict {
        skv_check::check::Verdict::Linearizable => exit::OK,
        _ => NOT_LINEARIZABLE,
    }
}
