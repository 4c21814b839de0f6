//! Smooth weighted round robin (the nginx algorithm) over keyed nodes.
//!
//! Every node's running score grows by its weight on each pick, the highest
//! score wins and gives back the total, so a 3:1 split sends exactly 3 of
//! every 4 calls to the heavier node, interleaved rather than in bursts, with
//! no randomness to make a test or a small fleet uneven. No maintained crate
//! balances by static weight (tower's `p2c` picks on load, unweighted), and
//! the algorithm is a few lines.

use std::collections::HashMap;
use std::sync::Arc;

use registry_core::{DEFAULT_WEIGHT, ServiceNode};

/// The weight a balancer gives `node`: its `weight`, or [`DEFAULT_WEIGHT`] when ≤ 0.
pub fn effective_weight(node: &ServiceNode) -> i64 {
    if node.weight > 0 { node.weight } else { DEFAULT_WEIGHT }
}

/// One node in the rotation.
struct Slot<T> {
    key: Arc<str>,
    weight: i64,
    /// Smooth weighted round robin score.
    score: i64,
    value: T,
}

/// Smooth weighted round robin over keyed values (a node's channel).
pub(crate) struct Picker<T> {
    slots: Vec<Slot<T>>,
}

impl<T> Default for Picker<T> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<T> Picker<T> {
    /// The index of the next node among those `eligible` accepts (by key).
    fn pick_index(&mut self, eligible: impl Fn(&str) -> bool) -> Option<usize> {
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.slots.len() {
            if self.slots[i].weight <= 0 || !eligible(&self.slots[i].key) {
                continue;
            }
            let slot = &mut self.slots[i];
            slot.score += slot.weight;
            total += slot.weight;
            // The first highest score wins, so ties go in insertion order.
            if best.is_none_or(|b| self.slots[i].score > self.slots[b].score) {
                best = Some(i);
            }
        }
        let best = best?;
        self.slots[best].score -= total;
        Some(best)
    }

    /// The next node's value.
    #[cfg(test)]
    fn pick(&mut self) -> Option<&T> {
        self.pick_where(|_| true).map(|(_, value)| value)
    }

    /// The next node among those `eligible` accepts (by key; the others
    /// keep their scores, as nginx skips a peer that is down) with a
    /// positive weight: its key and value.
    pub(crate) fn pick_where(&mut self, eligible: impl Fn(&str) -> bool) -> Option<(&Arc<str>, &T)> {
        let i = self.pick_index(eligible)?;
        Some((&self.slots[i].key, &self.slots[i].value))
    }

    /// The value kept for `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<&T> {
        self.slots.iter().find(|s| &*s.key == key).map(|s| &s.value)
    }

    /// Adds a node or replaces its value and weight (its score is kept, so an
    /// update does not disturb the rotation).
    pub(crate) fn upsert(&mut self, key: Arc<str>, weight: i64, value: T) {
        match self.slots.iter_mut().find(|s| s.key == key) {
            Some(slot) => {
                slot.weight = weight;
                slot.value = value;
            }
            None => self.slots.push(Slot { key, weight, score: 0, value }),
        }
    }

    /// Sets a node's weight, if it is in the rotation.
    pub(crate) fn set_weight(&mut self, key: &str, weight: i64) {
        if let Some(slot) = self.slots.iter_mut().find(|s| &*s.key == key) {
            slot.weight = weight;
        }
    }

    /// Removes a node.
    pub(crate) fn remove(&mut self, key: &str) {
        self.slots.retain(|s| &*s.key != key);
    }

    /// Forgets every node.
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Number of nodes with a positive weight (the ones that can be picked).
    pub(crate) fn pickable(&self) -> usize {
        self.slots.iter().filter(|s| s.weight > 0).count()
    }

    /// The nodes, by key, in insertion order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&Arc<str>, &T)> {
        self.slots.iter().map(|s| (&s.key, &s.value))
    }

    /// The nodes by key, with their weights.
    pub(crate) fn weights(&self) -> HashMap<Arc<str>, i64> {
        self.slots.iter().map(|s| (Arc::clone(&s.key), s.weight)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picker(weights: &[i64]) -> Picker<usize> {
        let mut picker = Picker::default();
        for (i, w) in weights.iter().enumerate() {
            picker.upsert(Arc::from(format!("n{i}")), *w, i);
        }
        picker
    }

    fn shares(picker: &mut Picker<usize>, calls: usize) -> Vec<usize> {
        let mut counts = vec![0; picker.len()];
        for _ in 0..calls {
            counts[*picker.pick().expect("a node")] += 1;
        }
        counts
    }

    #[test]
    fn smooth_weighted_round_robin_splits_exactly_and_interleaves() {
        let mut p = picker(&[300, 100]);
        assert_eq!(shares(&mut p, 4000), [3000, 1000]);
        let mut p = picker(&[5, 1, 1]);
        assert_eq!(shares(&mut p, 7), [5, 1, 1]);
        // Interleaved, not in bursts: the heavy node never runs 5 in a row.
        let mut p = picker(&[5, 1, 1]);
        let order: Vec<usize> = (0..7).map(|_| *p.pick().expect("a node")).collect();
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn empty_picker_picks_nothing() {
        assert!(Picker::<usize>::default().pick().is_none());
    }

    #[test]
    fn removed_node_gets_no_more_picks() {
        let mut p = picker(&[1, 1, 1]);
        p.remove("n1");
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[*p.pick().expect("a node")] += 1;
        }
        assert_eq!(counts, [15, 0, 15]);
    }

    #[test]
    fn ineligible_nodes_are_skipped_and_the_rest_stay_exact() {
        let mut p = picker(&[300, 100, 100]);
        let mut counts = [0; 3];
        for _ in 0..4000 {
            let (_, i) = p.pick_where(|key| key != "n2").expect("a node");
            counts[*i] += 1;
        }
        assert_eq!(counts, [3000, 1000, 0]);
    }

    #[test]
    fn non_positive_weight_counts_as_default() {
        let mut node = ServiceNode { weight: 0, ..Default::default() };
        assert_eq!(effective_weight(&node), DEFAULT_WEIGHT);
        node.weight = -5;
        assert_eq!(effective_weight(&node), DEFAULT_WEIGHT);
        node.weight = 7;
        assert_eq!(effective_weight(&node), 7);
    }
}
