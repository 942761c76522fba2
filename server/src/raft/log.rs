//! The Raft log of every group on this node, in sled.
