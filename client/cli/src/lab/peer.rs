//! `skv lab peer-call`: send one request of the node-to-node protocol (docs/SECURITY.md, "Node
//! identity and the peer protocol") with whatever certificate and token you give, and print
//! what the node answers. The node decides what a connection may send from the SPIFFE ID of
//! its certificate alone; this tool lets a lab show that decision (lab 12). It sends nothing a
//! client could not send by hand: the frames are the protocol's, their payloads minimal.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use skv_client::{exit, ClientError, ConnectOptions, Connection, Security};
use skv_proto::cluster::ControlRequest;
use skv_proto::message::{RequestBody, ResponseBody};

use super::{Failure, Result};

/// `peer-call`.
#[derive(Debug, Args)]
pub(crate) struct PeerCallArgs {
    /// The node, HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    pub(crate) addr: String,
    /// The cluster CA certificate, to verify the node.
    #[arg(long, value_name = "PEM")]
    pub(crate) ca: PathBuf,
    /// The certificate to present (a client's or a node's).
    #[arg(long, value_name = "PEM")]
    pub(crate) cert: PathBuf,
    /// Its private key.
    #[arg(long, value_name = "PEM")]
    pub(crate) key: PathBuf,
    /// A token to send with the request.
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// What to send.
    #[arg(value_enum)]
    pub(crate) request: PeerRequest,
}

/// The peer requests `peer-call` can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PeerRequest {
    /// CONTROL propose_map: a map change for the metadata group, as one node forwards it to
    /// the group's leader (here: an empty change).
    ProposeMap,
    /// RAFT: a RequestVote for shard 1's group, as a candidate node sends it (here: with an
    /// empty payload; a refusal for the certificate comes before the payload is read).
    RaftVote,
}

/// Raft RPC number of RequestVote in the peer protocol.
const RPC_VOTE: u8 = 2;

pub(crate) fn run(args: &PeerCallArgs) -> Result<u8> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let mut opts = ConnectOptions::new(
        args.addr.clone(),
        Security::Tls {
            ca: args.ca.clone(),
            identity: Some((args.cert.clone(), args.key.clone())),
        },
    );
    opts.token = token;
    opts.connect_timeout = Duration::from_secs(5);
    opts.request_timeout = Duration::from_secs(5);
    let rt = super::world::runtime()?;
    match rt.block_on(send(&opts, args.request)) {
        Ok(body) => {
            outln!("the node ACCEPTED the request and answered: {body:?}");
            Ok(exit::OK)
        }
        Err(e @ ClientError::Refused(_)) => {
            outln!("the node refused it: {e}");
            Ok(exit::REFUSED)
        }
        Err(e) => {
            outln!("the request failed: {e}");
            Ok(e.exit_code())
        }
    }
}

/// Connect with `opts` and send `request` (the checker replays with this too).
pub(crate) async fn send(
    opts: &ConnectOptions,
    request: PeerRequest,
) -> std::result::Result<ResponseBody, ClientError> {
    let body = match request {
        PeerRequest::ProposeMap => RequestBody::Control {
            json: Bytes::from(
                ControlRequest::ProposeMap {
                    change: "{}".into(),
                }
                .to_json(),
            ),
        },
        PeerRequest::RaftVote => RequestBody::Raft {
            group: 1,
            rpc: RPC_VOTE,
            payload: Bytes::new(),
        },
    };
    let conn = Connection::connect(opts).await?;
    conn.call(body).await
}
