//! `skv keys init|retire`: the token issuer's signing keys and the keyset nodes verify with.

use skv_certs::issuer::{keys_init_with, keys_retire, KeysInitOptions};
use skv_client::exit;

use crate::args::KeysCommand;

pub(crate) fn run(cmd: KeysCommand) -> u8 {
    let result = match cmd {
        KeysCommand::Init {
            dir,
            alg,
            kid,
            force,
        } => keys_init_with(&dir, &KeysInitOptions { alg, kid, force }).map(|report| {
            match (&report.previous_kid, &report.archived_key_file) {
                (Some(old), Some(archived)) => println!(
                    "rotated: new {} key {} signs from now on; the previous key {old} is kept \
                         as {} and still verifies until `skv keys retire --dir {} --kid {old}`",
                    report.alg.as_str(),
                    report.kid,
                    archived.display(),
                    dir.display()
                ),
                _ => println!("created {} issuer key {}", report.alg.as_str(), report.kid),
            }
            println!("wrote {}", report.key_file.display());
            println!(
                "wrote {} (kids: {}); give it to every node with --keyset",
                report.keyset_file.display(),
                report.keyset_kids.join(", ")
            );
        }),
        KeysCommand::Retire { dir, kid } => keys_retire(&dir, &kid).map(|report| {
            println!(
                "retired {}: tokens it signed are refused once nodes reload {} (kids left: {})",
                report.kid,
                report.keyset_file.display(),
                report.keyset_kids.join(", ")
            );
            if let Some(deleted) = report.deleted_key_file {
                println!("deleted {}", deleted.display());
            }
        }),
    };
    match result {
        Ok(()) => exit::OK,
        Err(err) => {
            eprintln!("skv keys: {err}");
            exit::USAGE
        }
    }
}
