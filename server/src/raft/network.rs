//! Raft messages to other nodes, over their mutual-TLS peer connections.
