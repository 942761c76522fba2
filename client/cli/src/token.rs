//! `skv token issue|inspect|revoke`.

use std::io::Write;
use std::path::Path;

use skv_certs::issuer::{inspect, mint, IssuerKey, TokenSpec};
use skv_client::exit;
use skv_token::denylist::{DenyBy, DenyEntry, Denylist, DenylistError};
use skv_token::{parse_allow, unix_now};

use crate::args::{IssueArgs, RevokeArgs, TokenCommand};

/// How long a revocation by --jti or --sub lasts without --until: longer than the tokens an
/// issuer usually grants (docs/SECURITY.md, "Revoking a token").
const DEFAULT_REVOKE_SECS: i64 = 24 * 3600;

pub(crate) fn run(cmd: TokenCommand) -> u8 {
    let result = match cmd {
        TokenCommand::Issue(args) => issue(args),
        TokenCommand::Inspect { token } => show(&token),
        TokenCommand::Revoke(args) => revoke(args),
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

fn revoke(args: RevokeArgs) -> Result<(), String> {
    let now = unix_now();
    let entry = match (&args.jti, &args.sub, &args.token_file) {
        (Some(jti), None, None) => DenyEntry {
            by: DenyBy::Jti(jti.clone()),
            exp: until(args.until.as_deref(), now)?,
        },
        (None, Some(sub), None) => DenyEntry {
            by: DenyBy::Sub(sub.clone()),
            exp: until(args.until.as_deref(), now)?,
        },
        (None, None, Some(path)) => entry_of_token_file(path)?,
        // clap's "what" group makes exactly one of them present.
        _ => return Err("give exactly one of --jti, --sub, --token-file".into()),
    };
    let mut list = match Denylist::read(&args.denylist) {
        Ok(list) => list,
        Err(DenylistError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Denylist::new()
        }
        // Never replace a file we cannot read: it may hold revocations we would drop.
        Err(err) => return Err(format!("{err}; not changed")),
    };
    let before = list.len();
    list.insert(entry.clone());
    list.drop_expired(now);
    // Checked before writing, so the nodes never see a file they would refuse.
    if let Err(problem) = Denylist::from_json(list.to_json().as_bytes()) {
        return Err(format!(
            "{}: the denylist would be refused: {problem}; not changed",
            args.denylist.display()
        ));
    }
    write_atomically(&args.denylist, list.to_json().as_bytes())?;
    if entry.exp <= now {
        println!(
            "the token already expired at {}: nothing to revoke; {} holds {} entr{}",
            entry.exp,
            args.denylist.display(),
            list.len(),
            if list.len() == 1 { "y" } else { "ies" }
        );
        return Ok(());
    }
    println!(
        "revoked {} {} until {} ({}s from now); {} holds {} entr{} ({} before)",
        entry.by.claim(),
        entry.by.value(),
        entry.exp,
        entry.exp - now,
        args.denylist.display(),
        list.len(),
        if list.len() == 1 { "y" } else { "ies" },
        before
    );
    println!("copy it to every node's --denylist path; each reloads it within a second");
    Ok(())
}

/// `--until`: a duration from now, or `@SECONDS` since the epoch.
fn until(arg: Option<&str>, now: i64) -> Result<i64, String> {
    let Some(arg) = arg else {
        return Ok(now.saturating_add(DEFAULT_REVOKE_SECS));
    };
    if let Some(secs) = arg.strip_prefix('@') {
        return secs
            .parse::<i64>()
            .map_err(|_| format!("--until {arg}: expected @SECONDS since the Unix epoch"));
    }
    let d = skv_load::parse_duration(arg).map_err(|e| format!("--until: {e}"))?;
    let secs = i64::try_from(d.as_secs()).map_err(|_| format!("--until {arg}: too long"))?;
    if secs == 0 {
        return Err(format!("--until {arg}: the entry would lapse at once"));
    }
    Ok(now.saturating_add(secs))
}

/// The jti and exp of the token in `path` (`-`: stdin), read without verifying it: revoking
/// needs no trust in the token, and a forged one only revokes its own jti.
fn entry_of_token_file(path: &Path) -> Result<DenyEntry, String> {
    let text = if path == Path::new("-") {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)
            .map_err(|e| format!("cannot read the token from stdin: {e}"))?;
        buf
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| format!("--token-file {}: {e}", path.display()))?
    };
    let t = inspect(text.trim()).map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let jti = t.claims.get("jti").and_then(|v| v.as_str()).unwrap_or("");
    if jti.is_empty() {
        return Err(format!(
            "--token-file {}: the token has no jti to revoke; revoke its --sub instead",
            path.display()
        ));
    }
    let exp = t
        .claims
        .get("exp")
        .and_then(|v| v.as_i64())
        .ok_or_else(|| {
            format!(
                "--token-file {}: the token has no integer exp; give --jti with --until",
                path.display()
            )
        })?;
    Ok(DenyEntry {
        by: DenyBy::Jti(jti.to_owned()),
        exp,
    })
}

/// Replace `path` with `bytes` so that a node reading it sees the old file or the new one,
/// never a part: a temp file in the same directory, synced, mode 0644, renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".denylist-")
        .tempfile_in(dir)
        .map_err(|e| fail(&e))?;
    tmp.write_all(bytes).map_err(|e| fail(&e))?;
    tmp.as_file().sync_all().map_err(|e| fail(&e))?;
    // The temp file is created 0600; the list holds no secret and every node's user reads it.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(|e| fail(&e))?;
    tmp.persist(path).map_err(|e| fail(&e.error))?;
    Ok(())
}
