//! `skv certs init` and `skv certs revoke`.

use skv_certs::{Ca, InitOptions, Layout};
use skv_client::exit;

use crate::args::{CertsCommand, CertsInitArgs, CertsRevokeArgs};

pub(crate) fn run(cmd: CertsCommand) -> u8 {
    match cmd {
        CertsCommand::Init(args) => init(args),
        CertsCommand::Revoke(args) => revoke(args),
    }
}

fn revoke(args: CertsRevokeArgs) -> u8 {
    let layout = Layout::new(&args.dir);
    let cert = match (args.cert, args.node, args.client) {
        (Some(cert), _, _) => cert,
        (None, Some(node), _) => layout.node_cert(&node),
        (None, None, Some(client)) => layout.client_cert(&client),
        (None, None, None) => unreachable!("clap requires one of --cert, --node, --client"),
    };
    // The default is spelled with DIR so the help says where it goes.
    let crl = if args.crl.as_os_str() == "DIR/crl.pem" {
        layout.crl()
    } else {
        args.crl
    };
    let ca = match Ca::load(&layout.ca_cert(), &layout.ca_key()) {
        Ok(ca) => ca,
        Err(err) => {
            eprintln!("skv certs revoke: {err}");
            return exit::USAGE;
        }
    };
    match skv_certs::revoke(&ca, &crl, &cert) {
        Ok(report) if report.already_revoked => {
            println!(
                "serial {} ({}) was already revoked in {}; nothing changed",
                report.serial,
                cert.display(),
                report.crl.display()
            );
            exit::OK
        }
        Ok(report) => {
            println!(
                "revoked serial {} ({}): {} now lists {} certificate(s); nodes started with \
                 --crl {} refuse it within a second",
                report.serial,
                cert.display(),
                report.crl.display(),
                report.revoked,
                report.crl.display()
            );
            exit::OK
        }
        Err(err) => {
            eprintln!("skv certs revoke: {err}");
            exit::USAGE
        }
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
