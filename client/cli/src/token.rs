//! `skv token issue|inspect`.

use std::path::Path;

use skv_certs::issuer::{inspect, mint, IssuerKey, TokenSpec};
use skv_client::exit;
use skv_token::parse_allow;

use crate::args::{IssueArgs, TokenCommand};

pub(crate) fn run(cmd: TokenCommand) -> u8 {
    let result = match cmd {
        TokenCommand::Issue(args) => issue(args),
        TokenCommand::Inspect { token } => show(&token),
    };
    match result {
        Ok(()) => exit::OK,
        Err(message) => {
            eprintln!("skv token: {message}");
            exit::USAGE
        }
    }
}

fn issue(args: IssueArgs) -> Result<(), String> {
    let key = load_issuer(&args.key)?;
    let scopes = args
        .allow
        .iter()
        .map(|a| parse_allow(a).map_err(|e| format!("--allow {a}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if scopes.is_empty() {
        return Err(
            "give at least one --allow OPS:PREFIX, e.g. --allow read,write:users/alice/".into(),
        );
    }
    let bind_cert_der = match &args.bind_cert {
        Some(path) => Some(cert_der(path)?),
        None => None,
    };
    let spec = TokenSpec {
        sub: args.sub,
        scopes,
        ttl: skv_load::parse_duration(&args.ttl).map_err(|e| format!("--ttl: {e}"))?,
        aud: args.aud,
        iss: args.iss,
        bind_cert_der,
    };
    let token = mint(&key, &spec).map_err(|e| e.to_string())?;
    // The token alone on stdout, so `TOKEN=$(skv token issue ...)` just works.
    println!("{token}");
    Ok(())
}

/// The issuer key given by path: the current key of its directory, whose kid the keyset
/// records. An archived (rotated-out) key is refused: tokens must be signed with the current
/// one.
fn load_issuer(path: &Path) -> Result<IssuerKey, String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name != "issuer-key.pem" && name != "issuer-key.secret" {
        return Err(format!(
            "--key {}: pass the current issuer key, DIR/issuer-key.pem (or .secret for hs256), \
             written by `skv keys init --dir DIR`",
            path.display()
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    IssuerKey::load(dir).map_err(|e| format!("--key {}: {e}", path.display()))
}

fn cert_der(path: &Path) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| {
            format!(
                "--bind-cert {}: cannot read a PEM certificate: {e}",
                path.display()
            )
        })
}

fn show(token: &str) -> Result<(), String> {
    let token = if token == "-" {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)
            .map_err(|e| format!("cannot read the token from stdin: {e}"))?;
        buf
    } else {
        token.to_owned()
    };
    let t = inspect(&token).map_err(|e| e.to_string())?;
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    println!("UNVERIFIED: decoded without checking the signature or any claim; anyone can write a token that says this.");
    println!("header: {}", pretty(&t.header));
    println!("claims: {}", pretty(&t.claims));
    println!(
        "signature: {} bytes; token: {} bytes",
        t.signature_len, t.token_len
    );
    Ok(())
}
