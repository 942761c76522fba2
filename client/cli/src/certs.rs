//! `skv certs init`.

use skv_certs::{InitOptions, Layout};
use skv_client::exit;

use crate::args::{CertsCommand, CertsInitArgs};

pub(crate) fn run(cmd: CertsCommand) -> u8 {
    match cmd {
        CertsCommand::Init(args) => init(args),
    }
}

fn init(args: CertsInitArgs) -> u8 {
    let layout = Layout::new(&args.dir);
    let opts = InitOptions {
        dir: args.dir,
        cluster: args.cluster,
        nodes: args.nodes,
        clients: args.clients,
        key_type: args.key_type,
        force: args.force,
    };
    match skv_certs::init(&opts) {
        Ok(report) => {
            for path in &report.written {
                println!("wrote {}", path.display());
            }
            if let Some(client) = opts.clients.first() {
                println!(
                    "\nuse it: skv --profile {} --addr HOST:PORT ping",
                    layout.client_profile(client).display()
                );
            }
            exit::OK
        }
        Err(err) => {
            eprintln!("skv certs init: {err}");
            exit::USAGE
        }
    }
}
