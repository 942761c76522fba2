//! Raft messages from other nodes: decoded, bounded, and handed to the group they name.
