//! The metadata group's state machine: the cluster map, and the only way it changes.
//!
//! Every change to the map is a [`MapChange`] in the metadata group's log, decided here, in
//! log order, identically on every member. Two administrators who change the map at once are
//! therefore serialized: the second change is decided against the map the first one made, and
//! a change that names the epoch it was planned against (`expect_epoch`) is refused when the
//! map has moved on. No node can push a map: a node's view is whatever this state machine has
//! applied, and epochs only grow by one per change, so none can be forged or wrapped.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use skv_proto::cluster::{format_ranges, ClusterMap, SlotRange, SlotSet};

use crate::raft::state::Machine;

/// A slot move in progress: recorded when it begins, so any metadata leader can finish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SlotMove {
    /// The move's id, unique in the cluster's history.
    pub(crate) id: u64,
    /// The slots moving.
    pub(crate) slots: Vec<SlotRange>,
    /// The shard giving them.
    pub(crate) from: u32,
    /// The shard receiving them.
    pub(crate) to: u32,
    /// Whether the map already names `to` as the owner (the giving shard still has to delete
    /// its copies).
    pub(crate) committed: bool,
    /// Keys copied, once committed.
    #[serde(default)]
    pub(crate) copied: u64,
}

/// The metadata group's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MapState {
    /// The map; `None` until the bootstrap entry is applied.
    pub(crate) map: Option<ClusterMap>,
    /// The slot move in progress, if any (one at a time).
    pub(crate) moving: Option<SlotMove>,
    /// The id the next move gets.
    pub(crate) next_move: u64,
    /// The last move that ended: its id and how many keys it copied.
    #[serde(default)]
    pub(crate) last_move: Option<(u64, u64)>,
}

/// A change to the map, as the metadata log carries it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum MapChange {
    /// The first map of the cluster (from `skv cluster init`). Refused once a map exists.
    Bootstrap {
        /// The map.
        map: ClusterMap,
    },
    /// Add a node to the map (it holds no replica yet). Gets the next Raft id.
    AddNode {
        /// Node id.
        id: String,
        /// `HOST:PORT`.
        addr: String,
    },
    /// Begin moving `slots` to shard `to`. Refused while another move runs, when the slots are
    /// not all owned by one other shard, or when the map's epoch is not `expect_epoch`.
    BeginMove {
        /// The slots.
        slots: Vec<SlotRange>,
        /// The receiving shard.
        to: u32,
        /// The epoch the administrator planned against, if given.
        expect_epoch: Option<u64>,
    },
    /// The receiving shard has committed its copy of move `id`: the map now names it.
    CommitMove {
        /// The move.
        id: u64,
        /// Keys copied.
        #[serde(default)]
        copied: u64,
    },
    /// The giving shard of move `id` has deleted its copies: the move is over.
    EndMove {
        /// The move.
        id: u64,
    },
    /// Replace node `dead` by a new node `with` at `addr` (a new Raft id): `with` takes `dead`'s
    /// place in the node list (so in the metadata group's voters too) and in every shard's
    /// replicas. Each group's leader then moves its Raft membership to match: `with` joins as a
    /// learner, catches up from a snapshot and the log, and replaces `dead` as a voter.
    ReplaceNode {
        /// The node to replace (usually one that is down for good).
        dead: String,
        /// The new node's id.
        with: String,
        /// Its `HOST:PORT`.
        addr: String,
    },
    /// Remove node `id`: its replicas go to the nodes holding the fewest, then it leaves the
    /// node list.
    RemoveNode {
        /// The node.
        id: String,
    },
    /// Give shard `shard` a new replica set (replace or rebalance replicas).
    SetReplicas {
        /// The shard.
        shard: u32,
        /// Its replicas, first the preferred leader.
        replicas: Vec<String>,
    },
}

/// What deciding a [`MapChange`] answers (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum MapOutcome {
    /// Applied; the map's epoch after it.
    Applied {
        /// The epoch.
        epoch: u64,
        /// The move the change began, for `BeginMove`.
        move_id: Option<u64>,
    },
    /// Refused; nothing changed.
    Refused {
        /// Why, for the administrator.
        reason: String,
    },
}

impl Machine for MapState {
    fn apply(&mut self, json: &[u8]) -> Vec<u8> {
        let outcome = match serde_json::from_slice::<MapChange>(json) {
            Ok(change) => self.decide(change),
            Err(err) => MapOutcome::Refused {
                reason: format!("not a map change: {err}"),
            },
        };
        serde_json::to_vec(&outcome).unwrap_or_default()
    }
}

impl MapState {
    fn decide(&mut self, change: MapChange) -> MapOutcome {
        match self.try_decide(change) {
            Ok(move_id) => MapOutcome::Applied {
                epoch: self.map.as_ref().map_or(0, |m| m.epoch),
                move_id,
            },
            Err(reason) => MapOutcome::Refused { reason },
        }
    }

    fn try_decide(&mut self, change: MapChange) -> Result<Option<u64>, String> {
        if let MapChange::Bootstrap { map } = change {
            if self.map.is_some() {
                return Err("the cluster already has a map".into());
            }
            map.validate().map_err(|e| e.to_string())?;
            self.map = Some(map);
            return Ok(None);
        }
        let Some(map) = self.map.as_ref() else {
            return Err("the cluster has no map yet".into());
        };
        let (next, move_id) = match change {
            MapChange::Bootstrap { .. } => unreachable!("handled above"),
            MapChange::AddNode { id, addr } => {
                if map.node(&id).is_some() {
                    return Err(format!("node `{id}` is already in the map"));
                }
                let mut next = map.with_node(&id, &addr);
                // The node's new (empty) shard gets as many replicas as the cluster's shards
                // have: the new node first, then the nodes holding the fewest replicas.
                let factor = map
                    .shards
                    .iter()
                    .map(|s| s.replicas.len())
                    .max()
                    .unwrap_or(1);
                let mut load: BTreeMap<String, usize> =
                    map.nodes.iter().map(|n| (n.id.clone(), 0)).collect();
                for shard in &map.shards {
                    for r in &shard.replicas {
                        *load.entry(r.clone()).or_default() += 1;
                    }
                }
                let mut others: Vec<(usize, String)> =
                    load.into_iter().map(|(node, n)| (n, node)).collect();
                others.sort();
                if let Some(shard) = next.shards.iter_mut().find(|s| s.replicas == [id.clone()]) {
                    shard.replicas.extend(
                        others
                            .into_iter()
                            .map(|(_, node)| node)
                            .take(factor.saturating_sub(1)),
                    );
                }
                (next, None)
            }
            MapChange::BeginMove {
                slots,
                to,
                expect_epoch,
            } => {
                if let Some(expected) = expect_epoch {
                    if expected != map.epoch {
                        return Err(format!(
                            "the map changed since this move was planned (epoch {} now, {expected} \
                             expected); look at the map again",
                            map.epoch
                        ));
                    }
                }
                if let Some(m) = &self.moving {
                    return Err(format!(
                        "move {} of slots {} is still running; one move at a time",
                        m.id,
                        format_ranges(&m.slots)
                    ));
                }
                if !map.shards.iter().any(|s| s.id == to) {
                    return Err(format!("there is no shard {to}"));
                }
                let set = SlotSet::from_ranges(&slots);
                if set.is_empty() {
                    return Err("no slots to move".into());
                }
                let mut from = None;
                for range in set.ranges() {
                    for slot in range.start..=range.end {
                        let owner = map.shard_of_slot(slot).map(|s| s.id);
                        match (owner, from) {
                            (Some(o), _) if o == to => {
                                return Err(format!("slot {slot} is already on shard {to}"))
                            }
                            (Some(o), None) => from = Some(o),
                            (Some(o), Some(f)) if o == f => {}
                            _ => {
                                return Err(
                                    "the slots of one move must all belong to one shard".into()
                                )
                            }
                        }
                    }
                }
                let id = self.next_move.max(1);
                self.next_move = id + 1;
                self.moving = Some(SlotMove {
                    id,
                    slots: set.ranges(),
                    from: from.unwrap_or_default(),
                    to,
                    committed: false,
                    copied: 0,
                });
                return Ok(Some(id));
            }
            MapChange::CommitMove { id, copied } => {
                let Some(m) = self.moving.as_mut().filter(|m| m.id == id) else {
                    return Err(format!("move {id} is not running"));
                };
                if m.committed {
                    return Ok(Some(id));
                }
                m.committed = true;
                m.copied = copied;
                let set = SlotSet::from_ranges(&m.slots);
                (map.with_slots_moved(&set, m.to), Some(id))
            }
            MapChange::EndMove { id } => {
                match &self.moving {
                    Some(m) if m.id == id && m.committed => {
                        self.last_move = Some((id, m.copied));
                        self.moving = None;
                    }
                    Some(m) if m.id == id => {
                        return Err(format!("move {id} has not been committed"));
                    }
                    _ => {}
                }
                return Ok(Some(id));
            }
            MapChange::ReplaceNode { dead, with, addr } => {
                if map.node(&dead).is_none() {
                    return Err(format!("node `{dead}` is not in the map"));
                }
                if map.node(&with).is_some() {
                    return Err(format!("node `{with}` is already in the map"));
                }
                // Computed before `dead` leaves, so its Raft id is never given out again.
                let raft_id = map.next_raft_id();
                let mut next = map.clone();
                next.epoch += 1;
                if let Some(slot) = next.nodes.iter_mut().find(|n| n.id == dead) {
                    *slot = skv_proto::cluster::NodeEntry {
                        id: with.clone(),
                        addr,
                        raft_id,
                    };
                }
                for shard in &mut next.shards {
                    for replica in &mut shard.replicas {
                        if *replica == dead {
                            *replica = with.clone();
                        }
                    }
                }
                (next, None)
            }
            MapChange::RemoveNode { id } => {
                if map.node(&id).is_none() {
                    return Err(format!("node `{id}` is not in the map"));
                }
                if self.moving.is_some() {
                    return Err("a slot move is running; remove the node once it ends".into());
                }
                let mut next = map.clone();
                next.epoch += 1;
                let others: Vec<String> = next
                    .nodes
                    .iter()
                    .filter(|n| n.id != id)
                    .map(|n| n.id.clone())
                    .collect();
                let mut load: BTreeMap<String, usize> =
                    others.iter().map(|n| (n.clone(), 0)).collect();
                for shard in &next.shards {
                    for r in &shard.replicas {
                        if let Some(count) = load.get_mut(r) {
                            *count += 1;
                        }
                    }
                }
                let owning: BTreeSet<u32> = next.slots.iter().map(|a| a.shard).collect();
                for shard in next.shards.iter_mut() {
                    let Some(at) = shard.replicas.iter().position(|r| *r == id) else {
                        continue;
                    };
                    let spare = others
                        .iter()
                        .filter(|n| !shard.replicas.contains(n))
                        .min_by_key(|n| (load.get(*n).copied().unwrap_or(0), (*n).clone()))
                        .cloned();
                    match spare {
                        Some(spare) => {
                            *load.entry(spare.clone()).or_default() += 1;
                            shard.replicas[at] = spare;
                        }
                        None if shard.replicas.len() > 1 => {
                            shard.replicas.remove(at);
                        }
                        None if owning.contains(&shard.id) => {
                            return Err(format!(
                                "node `{id}` holds the only replica of shard {} and no other \
                                 node can take it; move its slots away first",
                                shard.id
                            ))
                        }
                        None => shard.replicas.clear(),
                    }
                }
                // Shards left without replicas own no slots: they go too.
                next.shards.retain(|s| !s.replicas.is_empty());
                next.nodes.retain(|n| n.id != id);
                (next, None)
            }
            MapChange::SetReplicas { shard, replicas } => {
                let mut next = map.clone();
                let Some(entry) = next.shards.iter_mut().find(|s| s.id == shard) else {
                    return Err(format!("there is no shard {shard}"));
                };
                entry.replicas = replicas;
                next.epoch += 1;
                (next, None)
            }
        };
        next.validate().map_err(|e| e.to_string())?;
        if next.epoch <= map.epoch {
            return Err("a change must raise the epoch".into());
        }
        self.map = Some(next);
        Ok(move_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booted() -> MapState {
        let mut state = MapState::default();
        let nodes: Vec<(String, String)> = (1..=3)
            .map(|i| (format!("n{i}"), format!("127.0.0.1:{}", 7400 + i)))
            .collect();
        let map = ClusterMap::even("skv", &nodes);
        assert!(matches!(
            state.decide(MapChange::Bootstrap { map }),
            MapOutcome::Applied { .. }
        ));
        state
    }

    fn epoch(state: &MapState) -> u64 {
        state.map.as_ref().map(|m| m.epoch).unwrap_or(0)
    }

    #[test]
    fn a_second_bootstrap_is_refused() {
        let mut state = booted();
        let map = state.map.clone().expect("map");
        assert!(matches!(
            state.decide(MapChange::Bootstrap { map }),
            MapOutcome::Refused { .. }
        ));
    }

    #[test]
    fn two_moves_at_once_one_wins() {
        let mut state = booted();
        let planned = epoch(&state);
        let slots = vec![SlotRange::new(0, 99)];
        let to = state.map.as_ref().expect("map").shards[1].id;
        let first = state.decide(MapChange::BeginMove {
            slots: slots.clone(),
            to,
            expect_epoch: Some(planned),
        });
        let second = state.decide(MapChange::BeginMove {
            slots,
            to,
            expect_epoch: Some(planned),
        });
        assert!(matches!(
            first,
            MapOutcome::Applied {
                move_id: Some(_),
                ..
            }
        ));
        assert!(
            matches!(&second, MapOutcome::Refused { reason } if reason.contains("one move at a time")),
            "{second:?}"
        );
    }

    #[test]
    fn a_move_commits_then_ends_and_the_epoch_grows_by_one() {
        let mut state = booted();
        let before = epoch(&state);
        let to = state.map.as_ref().expect("map").shards[2].id;
        let MapOutcome::Applied {
            move_id: Some(id), ..
        } = state.decide(MapChange::BeginMove {
            slots: vec![SlotRange::new(0, 9)],
            to,
            expect_epoch: None,
        })
        else {
            panic!("move refused");
        };
        assert_eq!(epoch(&state), before, "beginning changes no owner");
        assert!(matches!(
            state.decide(MapChange::EndMove { id }),
            MapOutcome::Refused { .. }
        ));
        state.decide(MapChange::CommitMove { id, copied: 3 });
        assert_eq!(epoch(&state), before + 1);
        let map = state.map.clone().expect("map");
        assert_eq!(map.shard_of_slot(5).map(|s| s.id), Some(to));
        state.decide(MapChange::CommitMove { id, copied: 3 });
        assert_eq!(
            epoch(&state),
            before + 1,
            "a repeated commit changes nothing"
        );
        state.decide(MapChange::EndMove { id });
        assert!(state.moving.is_none());
        assert_eq!(state.last_move, Some((id, 3)));
    }

    #[test]
    fn a_stale_plan_is_refused() {
        let mut state = booted();
        let stale = epoch(&state);
        state.decide(MapChange::AddNode {
            id: "n4".into(),
            addr: "127.0.0.1:7404".into(),
        });
        let to = state.map.as_ref().expect("map").shards[1].id;
        let out = state.decide(MapChange::BeginMove {
            slots: vec![SlotRange::new(0, 9)],
            to,
            expect_epoch: Some(stale),
        });
        assert!(matches!(out, MapOutcome::Refused { .. }), "{out:?}");
    }

    #[test]
    fn a_removed_node_hands_its_replicas_to_the_least_loaded() {
        let mut state = MapState::default();
        let nodes: Vec<(String, String)> = (1..=4)
            .map(|i| (format!("n{i}"), format!("127.0.0.1:{}", 7400 + i)))
            .collect();
        let map = ClusterMap::even_replicated("skv", &nodes, 3).expect("map");
        state.decide(MapChange::Bootstrap { map });
        let before = epoch(&state);
        let out = state.decide(MapChange::RemoveNode { id: "n2".into() });
        assert!(matches!(out, MapOutcome::Applied { .. }), "{out:?}");
        let map = state.map.clone().expect("map");
        assert_eq!(map.epoch, before + 1);
        assert!(map.node("n2").is_none());
        for shard in &map.shards {
            assert_eq!(shard.replicas.len(), 3, "{shard:?}");
            assert!(!shard.replicas.contains(&"n2".to_owned()));
            let distinct: BTreeSet<_> = shard.replicas.iter().collect();
            assert_eq!(distinct.len(), 3);
        }
    }

    #[test]
    fn the_only_replica_of_a_shard_cannot_be_removed() {
        let mut state = booted();
        let out = state.decide(MapChange::RemoveNode { id: "n1".into() });
        // One replica per shard and every node holds one: n1's shard has nowhere to go but
        // another node, which takes it; only a single-node cluster refuses.
        assert!(matches!(out, MapOutcome::Applied { .. }), "{out:?}");
        let mut single = MapState::default();
        single.decide(MapChange::Bootstrap {
            map: ClusterMap::single("skv", "n1", "127.0.0.1:7401"),
        });
        let out = single.decide(MapChange::RemoveNode { id: "n1".into() });
        assert!(matches!(out, MapOutcome::Refused { .. }), "{out:?}");
    }

    #[test]
    fn garbage_is_refused_not_panicked() {
        let mut state = booted();
        let out: MapOutcome =
            serde_json::from_slice(&state.apply(b"{\"change\":\"nope\"}")).expect("json");
        assert!(matches!(out, MapOutcome::Refused { .. }));
    }
}
