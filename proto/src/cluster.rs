//! The cluster model both ends share: hash slots, the epoch-versioned cluster map, and the
//! control messages nodes and admin tools exchange.
//!
//! Keys are spread over [`SLOT_COUNT`] hash slots with the Redis Cluster function
//! ([`hash_slot`]: CRC16/XMODEM of the key, or of its `{tag}` when it has one, mod 16384).
//! Slot ranges belong to shards, and a shard lists its replicas: the nodes of its Raft group,
//! the first of which is the group's initial leader. The [`ClusterMap`] carries all of it plus
//! an epoch that grows by one with every change, so any two maps can be ordered and a node or
//! client always keeps the newer one.
//!
//! The map and the control messages travel as JSON inside frames (docs/PROTOCOL.md): they are
//! small, rare and read by people, unlike the data path, which stays binary.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

/// Number of hash slots.
pub const SLOT_COUNT: u16 = 16384;

/// Largest map a node accepts or sends, in JSON bytes (a map of 1000 nodes with fragmented
/// ranges stays well below).
pub const MAX_MAP_BYTES: usize = 256 * 1024;

/// Most nodes a map may list.
pub const MAX_MAP_NODES: usize = 1024;

/// Replicas per shard of a fresh cluster ([`ClusterMap::default_replicas`]): three survive
/// one failed node, which is what replication is for at this size.
pub const DEFAULT_REPLICAS: usize = 3;

/// Largest control message accepted, in JSON bytes (it may carry a map).
pub const MAX_CONTROL_BYTES: usize = MAX_MAP_BYTES + 4096;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes keys
/// with. `crc16(b"123456789") == 0x31c3`.
///
/// Every request hashes its key, so this takes two bytes a step (the byte-at-a-time loop was
/// 3 % of the node's CPU at inflight 16, docs/BENCHMARKS.md): with `x = crc ^ (b0 << 8 | b1)`,
/// two byte steps give `(T[hi(x)] << 8) ^ T[lo(x) ^ (T[hi(x)] >> 8)]`, and since the table is
/// linear in its index (`T[a ^ b] = T[a] ^ T[b]`) that is `T2[hi(x)] ^ T[lo(x)]`, with `T2`
/// computed once below. The two lookups no longer wait on each other.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    let mut pairs = data.chunks_exact(2);
    for pair in &mut pairs {
        let x = crc ^ u16::from_be_bytes([pair[0], pair[1]]);
        crc = CRC16_TABLE2[usize::from(x >> 8)] ^ CRC16_TABLE[usize::from(x & 0xff)];
    }
    for &byte in pairs.remainder() {
        crc = (crc << 8) ^ CRC16_TABLE[usize::from(((crc >> 8) as u8) ^ byte)];
    }
    crc
}

const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// `T2[i] = (T[i] << 8) ^ T[T[i] >> 8]`: the CRC of byte `i` followed by a zero byte, the high
/// half of [`crc16`]'s two-byte step.
const CRC16_TABLE2: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let t = CRC16_TABLE[i];
        table[i] = (t << 8) ^ CRC16_TABLE[(t >> 8) as usize];
        i += 1;
    }
    table
};

/// The part of `key` that is hashed: the text between the first `{` and the next `}` when it
/// is not empty (a hash tag, so `{user42}.profile` and `{user42}.cart` share a slot), else the
/// whole key. The same rule as Redis Cluster.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The hash slot of `key`, in `0..SLOT_COUNT`.
pub fn hash_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOT_COUNT
}

/// An inclusive range of slots, `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotRange {
    /// First slot.
    pub start: u16,
    /// Last slot (inclusive).
    pub end: u16,
}

impl SlotRange {
    /// `start..=end`.
    pub fn new(start: u16, end: u16) -> SlotRange {
        SlotRange { start, end }
    }

    /// Whether `slot` is in the range.
    pub fn contains(&self, slot: u16) -> bool {
        self.start <= slot && slot <= self.end
    }

    /// Number of slots in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Always false: a range holds at least one slot. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Display for SlotRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// `ranges` as `0-5460, 10923-16383`, for messages.
pub fn format_ranges(ranges: &[SlotRange]) -> String {
    if ranges.is_empty() {
        return "no slots".into();
    }
    ranges
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A set of slots as a 16384-bit bitmap: constant-time membership for the request path.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet {
    bits: Box<[u64; SLOT_COUNT as usize / 64]>,
}

impl std::fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotSet({})", format_ranges(&self.ranges()))
    }
}

impl Default for SlotSet {
    fn default() -> Self {
        SlotSet {
            bits: Box::new([0; SLOT_COUNT as usize / 64]),
        }
    }
}

impl SlotSet {
    /// The slots of `ranges` (slots beyond [`SLOT_COUNT`] are ignored).
    pub fn from_ranges(ranges: &[SlotRange]) -> SlotSet {
        let mut set = SlotSet::default();
        for r in ranges {
            for slot in r.start..=r.end.min(SLOT_COUNT - 1) {
                set.insert(slot);
            }
        }
        set
    }

    /// Add `slot`.
    pub fn insert(&mut self, slot: u16) {
        if slot < SLOT_COUNT {
            self.bits[usize::from(slot / 64)] |= 1 << (slot % 64);
        }
    }

    /// Whether `slot` is in the set.
    pub fn contains(&self, slot: u16) -> bool {
        slot < SLOT_COUNT && self.bits[usize::from(slot / 64)] & (1 << (slot % 64)) != 0
    }

    /// Number of slots in the set.
    pub fn len(&self) -> u32 {
        self.bits.iter().map(|w| w.count_ones()).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// The set as sorted, maximal ranges.
    pub fn ranges(&self) -> Vec<SlotRange> {
        let mut out: Vec<SlotRange> = Vec::new();
        for slot in 0..SLOT_COUNT {
            if self.contains(slot) {
                match out.last_mut() {
                    Some(last) if last.end + 1 == slot => last.end = slot,
                    _ => out.push(SlotRange::new(slot, slot)),
                }
            }
        }
        out
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Node id: the name in its certificate's SPIFFE ID, `spiffe://<cluster>/node/<id>`.
    pub id: String,
    /// `HOST:PORT` clients and peers dial.
    pub addr: String,
    /// The node's member id in every Raft group it belongs to: 1..=n for the nodes of a fresh
    /// map, one more than the largest so far for a node added later, never reused, so a wiped
    /// node that comes back under a new id cannot be taken for the member whose log it lost.
    /// 0 in maps written before replication (absent from their JSON).
    #[serde(default)]
    pub raft_id: u64,
}

/// A shard: the replica group that owns some slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Shard id, unique in the map.
    pub id: u32,
    /// Node ids holding the shard: the members of its Raft group, distinct. The first one is
    /// the group's initial leader (and the shard's server while it has one replica). A node
    /// may hold several shards.
    pub replicas: Vec<String>,
}

/// Slots assigned to a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotAssignment {
    /// First slot.
    pub start: u16,
    /// Last slot (inclusive).
    pub end: u16,
    /// The shard that owns them.
    pub shard: u32,
}

/// Why a cluster map is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The JSON did not parse or is too large.
    #[error("cluster map is not valid JSON of the expected shape: {0}")]
    Json(String),
    /// The map is structurally wrong; the message says where.
    #[error("invalid cluster map: {0}")]
    Invalid(String),
}

/// The cluster map: which shard owns which slots, which nodes hold each shard, and where to
/// reach them. Versioned by `epoch`: every change makes a map with a larger epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMap {
    /// Cluster name: the SPIFFE trust domain of every node and client certificate.
    pub cluster: String,
    /// Version of the map; larger is newer.
    pub epoch: u64,
    /// Every node, whether or not it holds a shard yet.
    pub nodes: Vec<NodeEntry>,
    /// Every shard.
    pub shards: Vec<ShardEntry>,
    /// Slot ranges to shards, sorted by start, covering all slots exactly once.
    pub slots: Vec<SlotAssignment>,
}

impl ClusterMap {
    /// A one-node cluster: `node` holds the only shard, which owns every slot. What a node
    /// started without a cluster map serves.
    pub fn single(cluster: &str, node: &str, addr: &str) -> ClusterMap {
        ClusterMap::even(cluster, &[(node.to_owned(), addr.to_owned())])
    }

    /// A fresh cluster at epoch 1 with one replica per shard: [`ClusterMap::even_replicated`]
    /// with `replicas` 1. `nodes` must not be empty.
    pub fn even(cluster: &str, nodes: &[(String, String)]) -> ClusterMap {
        let n = nodes.len().max(1) as u32;
        let mut slots = Vec::new();
        for i in 0..n {
            let start = (u32::from(SLOT_COUNT) * i / n) as u16;
            let end = (u32::from(SLOT_COUNT) * (i + 1) / n - 1) as u16;
            slots.push(SlotAssignment {
                start,
                end,
                shard: i + 1,
            });
        }
        ClusterMap {
            cluster: cluster.to_owned(),
            epoch: 1,
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, (id, addr))| NodeEntry {
                    id: id.clone(),
                    addr: addr.clone(),
                    raft_id: i as u64 + 1,
                })
                .collect(),
            shards: nodes
                .iter()
                .enumerate()
                .map(|(i, (id, _))| ShardEntry {
                    id: i as u32 + 1,
                    replicas: vec![id.clone()],
                })
                .collect(),
            slots,
        }
    }

    /// A fresh cluster at epoch 1: one shard per node, slots split into equal contiguous
    /// ranges in node order, node `i` (from 0) with Raft id `i + 1`. Shard `i + 1` is
    /// replicated on nodes `i, i + 1, …, i + replicas - 1` (mod the node count), so every
    /// node holds `replicas` shards and is the first replica (the initial leader) of exactly
    /// one: the load of leading is spread evenly, and losing one node costs each shard at most
    /// one replica.
    ///
    /// Refused unless `1 <= replicas <= nodes.len()`.
    pub fn even_replicated(
        cluster: &str,
        nodes: &[(String, String)],
        replicas: usize,
    ) -> Result<ClusterMap, MapError> {
        if nodes.is_empty() {
            return Err(MapError::Invalid(
                "a cluster needs at least one node".into(),
            ));
        }
        if replicas == 0 || replicas > nodes.len() {
            return Err(MapError::Invalid(format!(
                "{replicas} replicas per shard: choose 1 to {} (the number of nodes)",
                nodes.len()
            )));
        }
        let mut map = ClusterMap::even(cluster, nodes);
        let n = nodes.len();
        for (i, shard) in map.shards.iter_mut().enumerate() {
            shard.replicas = (0..replicas)
                .map(|k| nodes[(i + k) % n].0.clone())
                .collect();
        }
        map.validate()?;
        Ok(map)
    }

    /// The replication factor `skv cluster init` uses for `nodes` nodes when told none:
    /// [`DEFAULT_REPLICAS`], or every node in a smaller cluster.
    pub fn default_replicas(nodes: usize) -> usize {
        DEFAULT_REPLICAS.min(nodes).max(1)
    }

    /// The Raft id for a node joining this map: one more than the largest so far.
    pub fn next_raft_id(&self) -> u64 {
        self.nodes.iter().map(|n| n.raft_id).max().unwrap_or(0) + 1
    }

    /// The node with Raft id `raft_id` (never 0, which old maps use for "none").
    pub fn node_by_raft_id(&self, raft_id: u64) -> Option<&NodeEntry> {
        if raft_id == 0 {
            return None;
        }
        self.nodes.iter().find(|n| n.raft_id == raft_id)
    }

    /// The shard with id `id`.
    pub fn shard(&self, id: u32) -> Option<&ShardEntry> {
        self.shards.iter().find(|s| s.id == id)
    }

    /// Every shard `node` is a replica of, by shard id.
    pub fn shards_of_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a ShardEntry> {
        let mut held: Vec<&ShardEntry> = self
            .shards
            .iter()
            .filter(|s| s.replicas.iter().any(|r| r == node))
            .collect();
        held.sort_by_key(|s| s.id);
        held.into_iter()
    }

    /// Parse and [`validate`](ClusterMap::validate) a map.
    pub fn from_json(json: &[u8]) -> Result<ClusterMap, MapError> {
        check_size(json, MAX_MAP_BYTES)?;
        let map: ClusterMap =
            serde_json::from_slice(json).map_err(|e| MapError::Json(e.to_string()))?;
        map.validate()?;
        Ok(map)
    }

    /// The map as JSON (pretty, since people read the persisted copy).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs of strings and integers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Check the map's structure: unique node ids and (non-zero) Raft ids, unique shard ids,
    /// every shard with 1 to `nodes.len()` distinct replicas that are nodes of the map, slot
    /// ranges sorted and covering `0..SLOT_COUNT` exactly once, owned by known shards.
    pub fn validate(&self) -> Result<(), MapError> {
        let bad = |msg: String| Err(MapError::Invalid(msg));
        if self.nodes.len() > MAX_MAP_NODES {
            return bad(format!("more than {MAX_MAP_NODES} nodes"));
        }
        let mut node_ids = HashSet::new();
        for node in &self.nodes {
            if node.id.is_empty() || node.id.len() > 63 {
                return bad("a node id is empty or longer than 63 bytes".into());
            }
            if node.addr.is_empty() || node.addr.len() > 255 {
                return bad(format!(
                    "node {} has an empty or over-long address",
                    node.id
                ));
            }
            if !node_ids.insert(node.id.as_str()) {
                return bad(format!("node {} is listed twice", node.id));
            }
        }
        // 0 is what maps from before replication carry for every node: no id yet.
        let mut raft_ids = HashSet::new();
        for node in self.nodes.iter().filter(|n| n.raft_id != 0) {
            if !raft_ids.insert(node.raft_id) {
                return bad(format!(
                    "Raft id {} is given to more than one node (node {} among them)",
                    node.raft_id, node.id
                ));
            }
        }
        let mut shard_ids = HashSet::new();
        for shard in &self.shards {
            if !shard_ids.insert(shard.id) {
                return bad(format!("shard {} is listed twice", shard.id));
            }
            if shard.replicas.is_empty() {
                return bad(format!("shard {} has no replica", shard.id));
            }
            if shard.replicas.len() > self.nodes.len() {
                return bad(format!(
                    "shard {} lists {} replicas but the map has {} nodes",
                    shard.id,
                    shard.replicas.len(),
                    self.nodes.len()
                ));
            }
            // A node may hold several shards, but a shard holds a node once.
            let mut replicas = HashSet::new();
            for replica in &shard.replicas {
                if !node_ids.contains(replica.as_str()) {
                    return bad(format!("shard {} names unknown node {replica}", shard.id));
                }
                if !replicas.insert(replica.as_str()) {
                    return bad(format!("shard {} lists node {replica} twice", shard.id));
                }
            }
        }
        let mut next: u32 = 0;
        for a in &self.slots {
            if u32::from(a.start) != next || a.end < a.start || a.end >= SLOT_COUNT {
                return bad(format!(
                    "slot ranges must be sorted and cover 0-{} exactly once; found {}-{} where \
                     slot {next} was expected",
                    SLOT_COUNT - 1,
                    a.start,
                    a.end
                ));
            }
            if !shard_ids.contains(&a.shard) {
                return bad(format!(
                    "slots {}-{} belong to unknown shard {}",
                    a.start, a.end, a.shard
                ));
            }
            next = u32::from(a.end) + 1;
        }
        if next != u32::from(SLOT_COUNT) {
            return bad(format!("slots {next}-{} are not assigned", SLOT_COUNT - 1));
        }
        Ok(())
    }

    /// The node entry for `id`.
    pub fn node(&self, id: &str) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The shards a node serves: those that list it as their first replica, by shard id.
    pub fn shards_served_by<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a ShardEntry> {
        let mut served: Vec<&ShardEntry> = self
            .shards
            .iter()
            .filter(|s| s.replicas.first().map(String::as_str) == Some(id))
            .collect();
        served.sort_by_key(|s| s.id);
        served.into_iter()
    }

    /// A node's home shard: the one with the smallest id among those it serves. Slots moved
    /// to the node land there, so both ends of a move agree on the receiving shard from the
    /// map alone.
    pub fn home_shard(&self, id: &str) -> Option<u32> {
        self.shards_served_by(id).map(|s| s.id).next()
    }

    /// The shard that owns `slot`.
    pub fn shard_of_slot(&self, slot: u16) -> Option<&ShardEntry> {
        let i = self.slots.partition_point(|a| a.end < slot);
        let a = self.slots.get(i).filter(|a| a.start <= slot)?;
        self.shards.iter().find(|s| s.id == a.shard)
    }

    /// The node serving `slot`: the first replica of its shard.
    pub fn owner_of_slot(&self, slot: u16) -> Option<&NodeEntry> {
        let shard = self.shard_of_slot(slot)?;
        self.node(shard.replicas.first()?)
    }

    /// The slot ranges of shard `shard`, merged and sorted.
    pub fn ranges_of_shard(&self, shard: u32) -> Vec<SlotRange> {
        let mut out: Vec<SlotRange> = Vec::new();
        for a in self.slots.iter().filter(|a| a.shard == shard) {
            match out.last_mut() {
                Some(last) if u32::from(last.end) + 1 == u32::from(a.start) => last.end = a.end,
                _ => out.push(SlotRange::new(a.start, a.end)),
            }
        }
        out
    }

    /// The slot ranges a node serves over all its shards, merged and sorted (empty when it
    /// serves no shard).
    pub fn ranges_of_node(&self, id: &str) -> Vec<SlotRange> {
        self.slots_of_node(id).ranges()
    }

    /// The slots a node serves, as a bitmap.
    pub fn slots_of_node(&self, id: &str) -> SlotSet {
        let mut set = SlotSet::default();
        for shard in self.shards_served_by(id) {
            for r in self.ranges_of_shard(shard.id) {
                for slot in r.start..=r.end {
                    set.insert(slot);
                }
            }
        }
        set
    }

    /// For each slot, the index in `nodes` of the node serving it (`u16::MAX` if none): the
    /// client's routing table.
    pub fn slot_owners(&self) -> Vec<u16> {
        let mut owners = vec![u16::MAX; usize::from(SLOT_COUNT)];
        for a in &self.slots {
            let owner = self
                .shards
                .iter()
                .find(|s| s.id == a.shard)
                .and_then(|s| s.replicas.first())
                .and_then(|id| self.nodes.iter().position(|n| &n.id == id))
                .map_or(u16::MAX, |i| i as u16);
            for slot in a.start..=a.end.min(SLOT_COUNT - 1) {
                owners[usize::from(slot)] = owner;
            }
        }
        owners
    }

    /// The next map with node `id` at `addr` added, holding a new empty shard, with the
    /// next Raft id ([`ClusterMap::next_raft_id`]); or with its address updated when it is
    /// already listed (its Raft id kept).
    pub fn with_node(&self, id: &str, addr: &str) -> ClusterMap {
        let mut next = self.clone();
        next.epoch += 1;
        if let Some(node) = next.nodes.iter_mut().find(|n| n.id == id) {
            node.addr = addr.to_owned();
        } else {
            let raft_id = next.next_raft_id();
            next.nodes.push(NodeEntry {
                id: id.to_owned(),
                addr: addr.to_owned(),
                raft_id,
            });
        }
        if next.home_shard(id).is_none() {
            let shard = next.shards.iter().map(|s| s.id).max().unwrap_or(0) + 1;
            next.shards.push(ShardEntry {
                id: shard,
                replicas: vec![id.to_owned()],
            });
        }
        next
    }

    /// The next map with the slots of `moving` owned by `to_shard`; ranges are re-merged.
    pub fn with_slots_moved(&self, moving: &SlotSet, to_shard: u32) -> ClusterMap {
        let mut owner = vec![0u32; usize::from(SLOT_COUNT)];
        for a in &self.slots {
            for slot in a.start..=a.end.min(SLOT_COUNT - 1) {
                owner[usize::from(slot)] = a.shard;
            }
        }
        for (slot, o) in owner.iter_mut().enumerate() {
            if moving.contains(slot as u16) {
                *o = to_shard;
            }
        }
        let mut slots: Vec<SlotAssignment> = Vec::new();
        for (slot, &shard) in owner.iter().enumerate() {
            let slot = slot as u16;
            match slots.last_mut() {
                Some(last) if last.shard == shard => last.end = slot,
                _ => slots.push(SlotAssignment {
                    start: slot,
                    end: slot,
                    shard,
                }),
            }
        }
        let mut next = self.clone();
        next.epoch += 1;
        next.slots = slots;
        next
    }

    /// Moves that even out slot ownership over every shard: each step names the node that
    /// gives slots up, the node that receives them, and the ranges. Slots move from the
    /// shards above the fair share to those below it, taken from the end of the donor's
    /// ranges, so a fresh even map plus one empty node moves the fewest slots.
    pub fn rebalance_plan(&self) -> Vec<PlannedMove> {
        let serving: Vec<(u32, String)> = self
            .shards
            .iter()
            .filter_map(|s| Some((s.id, s.replicas.first()?.clone())))
            .collect();
        if serving.is_empty() {
            return Vec::new();
        }
        let n = serving.len() as u32;
        let total = u32::from(SLOT_COUNT);
        // Fair share: the first `total % n` shards (by id order) get one extra slot.
        let mut sorted = serving.clone();
        sorted.sort();
        let fair: BTreeMap<u32, u32> = sorted
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, total / n + u32::from((i as u32) < total % n)))
            .collect();
        let mut owned: BTreeMap<u32, Vec<u16>> =
            sorted.iter().map(|(id, _)| (*id, Vec::new())).collect();
        for a in &self.slots {
            if let Some(list) = owned.get_mut(&a.shard) {
                list.extend(a.start..=a.end.min(SLOT_COUNT - 1));
            }
        }
        let node_of = |shard: u32| {
            serving
                .iter()
                .find(|(id, _)| *id == shard)
                .map(|(_, n)| n.clone())
                .unwrap_or_default()
        };
        let mut surplus: Vec<(u32, Vec<u16>)> = Vec::new();
        let mut deficit: Vec<(u32, u32)> = Vec::new();
        for (shard, slots) in &owned {
            let fair = fair[shard];
            let have = slots.len() as u32;
            if have > fair {
                surplus.push((*shard, slots[fair as usize..].to_vec()));
            } else if have < fair {
                deficit.push((*shard, fair - have));
            }
        }
        let mut moves = Vec::new();
        let mut donors = surplus.into_iter();
        let mut current = donors.next();
        for (to, mut need) in deficit {
            while need > 0 {
                let Some((from, slots)) = current.as_mut() else {
                    break;
                };
                let take = (need as usize).min(slots.len());
                let taken: Vec<u16> = slots.drain(slots.len() - take..).collect();
                need -= take as u32;
                let mut set = SlotSet::default();
                for s in taken {
                    set.insert(s);
                }
                if !set.is_empty() {
                    moves.push(PlannedMove {
                        from: node_of(*from),
                        to: node_of(to),
                        ranges: set.ranges(),
                    });
                }
                if slots.is_empty() {
                    current = donors.next();
                }
            }
        }
        moves
    }
}

/// Refuse JSON larger than `limit` before parsing it.
fn check_size(json: &[u8], limit: usize) -> Result<(), MapError> {
    if json.len() > limit {
        return Err(MapError::Json(format!(
            "{} bytes exceeds the {limit}-byte limit",
            json.len()
        )));
    }
    Ok(())
}

/// One step of [`ClusterMap::rebalance_plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMove {
    /// Node giving the slots up (it coordinates the move).
    pub from: String,
    /// Node receiving them.
    pub to: String,
    /// The slots.
    pub ranges: Vec<SlotRange>,
}

/// Control-plane requests, carried as JSON in a CONTROL frame. Some come only from peer nodes
/// (authorized by their node certificate), the others from administrators (a client
/// certificate and, when the node checks tokens, a token with the `admin` scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Peer only: install this map if its epoch is newer than the node's.
    SetMap {
        /// The new map.
        map: ClusterMap,
    },
    /// Peer only: the sender is about to copy the keys of `ranges` here; drop any stale copy
    /// of them first.
    ImportBegin {
        /// The slots that will be imported.
        ranges: Vec<SlotRange>,
    },
    /// Peer only: make everything imported so far durable.
    ImportFlush,
    /// Admin: the node's view of itself.
    Status,
    /// Admin: add node `id` at `addr` to the map (epoch + 1, an empty shard) and send the new
    /// map to every node.
    AddNode {
        /// The new node's id.
        id: String,
        /// Where it listens.
        addr: String,
    },
    /// Admin, sent to the node serving `ranges`: copy their keys to node `to`, then hand
    /// ownership over with a new epoch. Answers once the move is complete.
    MoveSlots {
        /// Slots to move; the receiving node must serve all of them.
        ranges: Vec<SlotRange>,
        /// The node that takes them.
        to: String,
        /// Refuse the move unless the map's epoch is this one: the epoch the administrator
        /// planned the move against, so two administrators cannot both move the same slots.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect_epoch: Option<u64>,
    },
    /// Admin, replicated clusters: replace node `dead` (down for good, or its disk lost) by the
    /// new node `with` at `addr`, in the node list and in every shard's replicas; each group
    /// then rebuilds its copy on `with` from the surviving replicas.
    ReplaceNode {
        /// The node to replace.
        dead: String,
        /// The new node's id (it needs a node certificate of this cluster).
        with: String,
        /// Where the new node listens.
        addr: String,
    },
    /// Admin, replicated clusters: take node `id` out of the cluster. Each of its replicas is
    /// first given to another node (the one holding the fewest replicas), whose copy is built
    /// from the surviving replicas; then the node leaves the map. Refused when no other node
    /// can take a replica, or when it is the only replica of a shard.
    RemoveNode {
        /// The node to remove.
        id: String,
    },
    /// Peer only, replicated clusters: propose this map change (JSON, decided by the metadata
    /// group's state machine) to the metadata group, which the receiving node leads.
    ProposeMap {
        /// The change, as the metadata log carries it.
        change: String,
    },
}

impl ControlRequest {
    /// Whether only a peer node may send this.
    pub fn peer_only(&self) -> bool {
        matches!(
            self,
            ControlRequest::SetMap { .. }
                | ControlRequest::ImportBegin { .. }
                | ControlRequest::ImportFlush
                | ControlRequest::ProposeMap { .. }
        )
    }

    /// Short name for logs and audit lines.
    pub fn name(&self) -> &'static str {
        match self {
            ControlRequest::SetMap { .. } => "set_map",
            ControlRequest::ImportBegin { .. } => "import_begin",
            ControlRequest::ImportFlush => "import_flush",
            ControlRequest::Status => "status",
            ControlRequest::AddNode { .. } => "add_node",
            ControlRequest::MoveSlots { .. } => "move_slots",
            ControlRequest::ProposeMap { .. } => "propose_map",
            ControlRequest::ReplaceNode { .. } => "replace_node",
            ControlRequest::RemoveNode { .. } => "remove_node",
        }
    }

    /// Parse a control request, bounded by [`MAX_CONTROL_BYTES`].
    pub fn from_json(json: &[u8]) -> Result<ControlRequest, MapError> {
        check_size(json, MAX_CONTROL_BYTES)?;
        let req: ControlRequest =
            serde_json::from_slice(json).map_err(|e| MapError::Json(e.to_string()))?;
        if let ControlRequest::SetMap { map } = &req {
            map.validate()?;
        }
        Ok(req)
    }

    /// The request as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Answers to [`ControlRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlResponse {
    /// Done; nothing to report.
    Ok,
    /// The node's map after the change.
    Map {
        /// The map.
        map: ClusterMap,
    },
    /// Answer to [`ControlRequest::Status`].
    Status(NodeStatus),
    /// Answer to [`ControlRequest::MoveSlots`].
    Moved {
        /// Keys copied to the receiving node.
        keys: u64,
        /// Epoch of the map that handed the slots over.
        epoch: u64,
    },
    /// Answer to an IMPORT frame.
    Imported {
        /// Entries written.
        written: u64,
        /// Keys removed.
        removed: u64,
    },
}

impl ControlResponse {
    /// Parse a control response, bounded by [`MAX_CONTROL_BYTES`].
    pub fn from_json(json: &[u8]) -> Result<ControlResponse, MapError> {
        check_size(json, MAX_CONTROL_BYTES)?;
        serde_json::from_slice(json).map_err(|e| MapError::Json(e.to_string()))
    }

    /// The response as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A node's report on itself, for `skv cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub node: String,
    /// Epoch of the node's map.
    pub epoch: u64,
    /// Keys stored in slots the node serves.
    pub keys: u64,
    /// Slots the node serves.
    pub ranges: Vec<SlotRange>,
    /// Slots being handed to another node right now, if any.
    pub migrating: Option<Migrating>,
    /// Replicated clusters: every shard replica on the node (and the metadata group, as
    /// shard 0).
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
}

/// One replica's view of its Raft group, for `skv cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The shard (0: the metadata group).
    pub shard: u32,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// The leader this replica knows of.
    pub leader: Option<String>,
    /// The Raft term.
    pub term: u64,
    /// Index of the last entry in this replica's log.
    pub last_log: u64,
    /// Index of the last entry applied to its state machine.
    pub applied: u64,
    /// On the leader: each follower's node id and how many entries it is behind.
    pub lag: Vec<(String, u64)>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub quorum_ack_ms: Option<u64>,
    /// Keys in the replica's state machine.
    pub keys: u64,
    /// Index of the last entry the replica's latest snapshot covers (0: none). A replica that
    /// was brought up by installing a snapshot has one from the start.
    #[serde(default)]
    pub snapshot: u64,
    /// Index of the last entry purged from its log (0: none).
    #[serde(default)]
    pub purged: u64,
}

/// A move in progress on the giving node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migrating {
    /// Receiving node.
    pub to: String,
    /// Slots on the move.
    pub ranges: Vec<SlotRange>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_and_slots_match_redis_cluster() {
        assert_eq!(crc16(b"123456789"), 0x31c3);
        // Values from redis-cli CLUSTER KEYSLOT.
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"bar"), 5061);
        assert_eq!(hash_slot(b"hello"), 866);
        assert_eq!(hash_slot(b""), 0);
    }

    /// The polynomial applied one bit at a time, as the standard defines it: what the
    /// two-bytes-a-step [`crc16`] must agree with for every length, odd ones included.
    fn crc16_bitwise(data: &[u8]) -> u16 {
        let mut crc: u16 = 0;
        for &byte in data {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn crc16_two_bytes_a_step_agrees_with_the_bitwise_definition() {
        // A fixed xorshift stream: every byte value turns up, at odd and even offsets.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for len in 0..=67 {
            for start in [0, 1, 1000, 4000 - len] {
                let slice = &data[start..start + len];
                assert_eq!(crc16(slice), crc16_bitwise(slice), "len {len} at {start}");
            }
        }
        assert_eq!(crc16(&data), crc16_bitwise(&data));
    }

    #[test]
    fn hash_tags_follow_the_redis_rule() {
        assert_eq!(
            hash_slot(b"{user1000}.following"),
            hash_slot(b"{user1000}.followers")
        );
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        // Empty tag: the whole key is hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        // Only the first `{` counts, and the first `}` after it.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"no}open{"), b"no}open{");
    }

    #[test]
    fn even_maps_cover_every_slot_once() {
        for n in 1..=7 {
            let nodes: Vec<(String, String)> = (1..=n)
                .map(|i| (format!("n{i}"), format!("127.0.0.1:{}", 7400 + i)))
                .collect();
            let map = ClusterMap::even("test", &nodes);
            map.validate().unwrap();
            let total: u32 = (1..=n)
                .map(|i| map.slots_of_node(&format!("n{i}")).len())
                .sum();
            assert_eq!(total, u32::from(SLOT_COUNT));
            let back = ClusterMap::from_json(&map.to_json()).unwrap();
            assert_eq!(back, map);
        }
        let three = ClusterMap::even(
            "t",
            &[
                ("a".into(), "h:1".into()),
                ("b".into(), "h:2".into()),
                ("c".into(), "h:3".into()),
            ],
        );
        assert_eq!(three.ranges_of_node("a"), vec![SlotRange::new(0, 5460)]);
        assert_eq!(
            three.ranges_of_node("c"),
            vec![SlotRange::new(10922, 16383)]
        );
        assert_eq!(three.owner_of_slot(5461).unwrap().id, "b");
        let owners = three.slot_owners();
        assert_eq!(owners[0], 0);
        assert_eq!(owners[16383], 2);
    }

    #[test]
    fn invalid_maps_are_refused() {
        let good = ClusterMap::even(
            "t",
            &[("a".into(), "h:1".into()), ("b".into(), "h:2".into())],
        );
        let mut gap = good.clone();
        gap.slots[1].start += 1;
        assert!(gap.validate().is_err());
        let mut unknown = good.clone();
        unknown.shards[0].replicas = vec!["zz".into()];
        assert!(unknown.validate().is_err());
        let mut dup = good.clone();
        dup.nodes.push(dup.nodes[0].clone());
        assert!(dup.validate().is_err());
        let mut short = good.clone();
        short.slots.pop();
        assert!(short.validate().is_err());
        assert!(ClusterMap::from_json(b"{\"cluster\":1}").is_err());
        assert!(ClusterMap::from_json(&vec![b' '; MAX_MAP_BYTES + 1]).is_err());
    }

    fn named(n: usize) -> Vec<(String, String)> {
        (1..=n)
            .map(|i| (format!("n{i}"), format!("h:{i}")))
            .collect()
    }

    fn replicas(map: &ClusterMap) -> Vec<Vec<&str>> {
        map.shards
            .iter()
            .map(|s| s.replicas.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn replicated_maps_place_shards_on_consecutive_nodes() {
        let three = ClusterMap::even_replicated("t", &named(3), 3).unwrap();
        assert_eq!(
            replicas(&three),
            [["n1", "n2", "n3"], ["n2", "n3", "n1"], ["n3", "n1", "n2"]]
        );
        let five = ClusterMap::even_replicated("t", &named(5), 3).unwrap();
        assert_eq!(
            replicas(&five),
            [
                ["n1", "n2", "n3"],
                ["n2", "n3", "n4"],
                ["n3", "n4", "n5"],
                ["n4", "n5", "n1"],
                ["n5", "n1", "n2"],
            ]
        );
        for i in 1..=5 {
            let id = format!("n{i}");
            assert_eq!(five.shards_of_node(&id).count(), 3, "{id} holds 3 shards");
            assert_eq!(five.shards_served_by(&id).count(), 1, "{id} leads 1 shard");
        }
        assert_eq!(
            five.nodes.iter().map(|n| n.raft_id).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        // Slots as in the unreplicated map; the first replica is the initial owner.
        assert_eq!(five.slots, ClusterMap::even("t", &named(5)).slots);
        assert_eq!(five.owner_of_slot(0).unwrap().id, "n1");
        assert_eq!(ClusterMap::from_json(&five.to_json()).unwrap(), five);

        // Two nodes: the default is both.
        assert_eq!(ClusterMap::default_replicas(2), 2);
        assert_eq!(ClusterMap::default_replicas(1), 1);
        assert_eq!(ClusterMap::default_replicas(3), 3);
        assert_eq!(ClusterMap::default_replicas(9), 3);
        let two = ClusterMap::even_replicated("t", &named(2), 2).unwrap();
        assert_eq!(replicas(&two), [["n1", "n2"], ["n2", "n1"]]);
        // One replica: the old placement exactly.
        assert_eq!(
            ClusterMap::even_replicated("t", &named(4), 1).unwrap(),
            ClusterMap::even("t", &named(4))
        );
    }

    #[test]
    fn replica_counts_and_raft_ids_are_validated() {
        for (nodes, replicas) in [(3, 0), (3, 4), (1, 2), (0, 1)] {
            let err = ClusterMap::even_replicated("t", &named(nodes), replicas).unwrap_err();
            assert!(
                matches!(err, MapError::Invalid(_)),
                "{nodes}/{replicas}: {err}"
            );
        }
        let good = ClusterMap::even_replicated("t", &named(3), 3).unwrap();
        let mut twice = good.clone();
        twice.shards[0].replicas = vec!["n1".into(), "n2".into(), "n1".into()];
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        let mut stranger = good.clone();
        stranger.shards[1].replicas[2] = "n9".into();
        assert!(stranger.validate().unwrap_err().to_string().contains("n9"));
        let mut too_many = ClusterMap::even("t", &named(2));
        too_many.shards[0].replicas = vec!["n1".into(), "n2".into(), "n3".into()];
        assert!(too_many.validate().is_err());
        let mut same_raft_id = good.clone();
        same_raft_id.nodes[2].raft_id = 1;
        assert!(same_raft_id
            .validate()
            .unwrap_err()
            .to_string()
            .contains("Raft id 1"));
    }

    #[test]
    fn maps_from_before_replication_parse_and_new_nodes_get_fresh_raft_ids() {
        let old = br#"{"cluster": "skv", "epoch": 3,
            "nodes": [{"id": "n1", "addr": "h:1"}, {"id": "n2", "addr": "h:2"}],
            "shards": [{"id": 1, "replicas": ["n1"]}, {"id": 2, "replicas": ["n2"]}],
            "slots": [{"start": 0, "end": 8191, "shard": 1},
                      {"start": 8192, "end": 16383, "shard": 2}]}"#;
        let map = ClusterMap::from_json(old).unwrap();
        assert!(map.nodes.iter().all(|n| n.raft_id == 0));
        assert_eq!(map.node_by_raft_id(0), None);
        let grown = map.with_node("n3", "h:3");
        assert_eq!(grown.node("n3").unwrap().raft_id, 1);

        let map = ClusterMap::even_replicated("t", &named(3), 3).unwrap();
        let grown = map.with_node("n4", "h:4").with_node("n5", "h:5");
        assert_eq!(grown.node("n4").unwrap().raft_id, 4);
        assert_eq!(grown.node("n5").unwrap().raft_id, 5);
        assert_eq!(grown.node_by_raft_id(5).unwrap().id, "n5");
        // A new address for a listed node keeps its id.
        let moved = grown.with_node("n2", "h:22");
        assert_eq!(moved.node("n2").unwrap().raft_id, 2);
        assert_eq!(moved.node("n2").unwrap().addr, "h:22");
        moved.validate().unwrap();
    }

    #[test]
    fn adding_a_node_and_rebalancing_moves_a_fair_share() {
        let nodes: Vec<(String, String)> = (1..=3)
            .map(|i| (format!("n{i}"), format!("h:{i}")))
            .collect();
        let map = ClusterMap::even("t", &nodes).with_node("n4", "h:4");
        assert_eq!(map.epoch, 2);
        map.validate().unwrap();
        assert!(map.ranges_of_node("n4").is_empty());
        let plan = map.rebalance_plan();
        assert!(plan.iter().all(|m| m.to == "n4"));
        let mut next = map.clone();
        for step in &plan {
            let shard = next.home_shard(&step.to).unwrap();
            next = next.with_slots_moved(&SlotSet::from_ranges(&step.ranges), shard);
            next.validate().unwrap();
        }
        for i in 1..=4 {
            let have = next.slots_of_node(&format!("n{i}")).len();
            assert!((4095..=4097).contains(&have), "n{i} has {have} slots");
        }
        // Already balanced: nothing to do.
        assert!(next.rebalance_plan().is_empty());
    }

    #[test]
    fn control_messages_round_trip() {
        let map = ClusterMap::single("t", "n1", "127.0.0.1:1");
        for req in [
            ControlRequest::SetMap { map: map.clone() },
            ControlRequest::ImportBegin {
                ranges: vec![SlotRange::new(1, 2)],
            },
            ControlRequest::ImportFlush,
            ControlRequest::Status,
            ControlRequest::AddNode {
                id: "n2".into(),
                addr: "h:2".into(),
            },
            ControlRequest::MoveSlots {
                ranges: vec![SlotRange::new(0, 9)],
                to: "n2".into(),
                expect_epoch: None,
            },
        ] {
            assert_eq!(ControlRequest::from_json(&req.to_json()).unwrap(), req);
        }
        for resp in [
            ControlResponse::Ok,
            ControlResponse::Map { map },
            ControlResponse::Moved { keys: 3, epoch: 9 },
            ControlResponse::Imported {
                written: 1,
                removed: 2,
            },
        ] {
            assert_eq!(ControlResponse::from_json(&resp.to_json()).unwrap(), resp);
        }
    }

    #[test]
    fn slot_sets_round_trip_through_ranges() {
        let ranges = vec![
            SlotRange::new(0, 10),
            SlotRange::new(100, 100),
            SlotRange::new(16000, 16383),
        ];
        let set = SlotSet::from_ranges(&ranges);
        assert_eq!(set.ranges(), ranges);
        assert_eq!(set.len(), 11 + 1 + 384);
        assert!(set.contains(16383) && !set.contains(11));
        assert_eq!(format_ranges(&ranges), "0-10, 100, 16000-16383");
    }
}
