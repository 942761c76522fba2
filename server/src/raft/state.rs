//! A shard's state machine: its keyspace, its slots, its version counter and its client
//! sessions, in sled.
