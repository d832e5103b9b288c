//! Several instances on one database and broker: partitioned ownership.
//!
//! Every saga belongs to one of `partitions` partitions, derived from its id. Each
//! partition is leased to one live instance through a row of `saga_partitions`; the
//! lease's epoch grows at each change of hands, and every snapshot write names the epoch
//! it was made under, so an instance that lost a partition can no longer write to it.
//! See [`lease`] for the loop that renews, takes over and hands back partitions.

pub mod lease;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The partition of a saga id: bytes 2..3 XOR bytes 14..15 of the UUID, mod `n`.
/// `saga_partition(id, n)` in `sql/0004_partitions.sql` computes the same.
pub fn partition_of(id: &Uuid, n: u32) -> u32 {
    let b = id.as_bytes();
    let mixed = u16::from_be_bytes([b[2], b[3]]) ^ u16::from_be_bytes([b[14], b[15]]);
    u32::from(mixed) % n.max(1)
}

/// The lease a write is made under: the saga's partition and the epoch held on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The partition.
    pub partition: i32,
    /// The epoch of this instance's lease on it.
    pub epoch: i64,
}

/// Which partitions this instance holds, and under which epochs; shared by every part.
///
/// A lease is held only until its local expiry: the start of the last renewal that
/// succeeded, plus the lease, minus a margin. The database's expiry is at least the lease
/// after that same instant (the renewal's `now()` comes later), and no other instance takes
/// the partition before then; so past the local expiry this instance stops acting (no ack,
/// no publish, no write) before anybody else can start, even when it cannot reach the
/// database to learn it lost the lease, or wakes from a pause with deliveries prefetched.
#[derive(Debug)]
pub struct Ownership {
    instance: String,
    /// Epoch per partition; 0 when not held.
    epochs: Vec<AtomicI64>,
    /// Per partition: local expiry, in ms since `origin` (0: not held).
    valid_until: Vec<AtomicU64>,
    origin: Instant,
    /// This process's own id: tells it apart from another process given the same instance id.
    incarnation: Uuid,
    /// Another live process uses this instance id: nothing is taken while it is.
    twin: AtomicBool,
    /// Wakes the lease loop early: the database refused this instance as a partition's owner.
    recheck: tokio::sync::Notify,
}

impl Ownership {
    /// Holds nothing yet.
    pub fn new(instance: String, partitions: u32) -> Self {
        let n = partitions.max(1);
        Ownership {
            instance,
            epochs: (0..n).map(|_| AtomicI64::new(0)).collect(),
            valid_until: (0..n).map(|_| AtomicU64::new(0)).collect(),
            origin: Instant::now(),
            incarnation: Uuid::new_v4(),
            twin: AtomicBool::new(false),
            recheck: tokio::sync::Notify::new(),
        }
    }

    fn ms_since_origin(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Extends the local expiry of held partitions to `until` (see the type's doc).
    pub(crate) fn extend(&self, partitions: &[u32], until: Instant) {
        let ms = self.ms_since_origin(until);
        for &p in partitions {
            if let Some(slot) = self.valid_until.get(p as usize) {
                slot.store(ms, Ordering::Release);
            }
        }
    }

    /// Held partitions whose local expiry has passed.
    pub fn expired(&self) -> Vec<u32> {
        let now = self.ms_since_origin(Instant::now());
        (0..self.partitions())
            .filter(|&p| {
                self.epochs[p as usize].load(Ordering::Acquire) > 0
                    && self.valid_until[p as usize].load(Ordering::Acquire) <= now
            })
            .collect()
    }

    /// Whether this instance holds every partition (it runs alone): then every reply on the
    /// shared reply queue is its own, and commands ask for replies there.
    pub fn holds_all(&self) -> bool {
        self.epochs.iter().all(|e| e.load(Ordering::Acquire) > 0)
    }

    /// The partition whose queue a command of saga `id` names as `reply_to`: none (the shared
    /// reply queue) while this instance runs alone, else the saga's, which its owner consumes.
    pub fn reply_partition(&self, id: &Uuid) -> Option<u32> {
        (!self.holds_all()).then(|| self.partition(id))
    }

    /// This process's incarnation (a random id, new at every start).
    pub fn incarnation(&self) -> Uuid {
        self.incarnation
    }

    /// Whether another live process holds this instance id (see `leases::heartbeat`).
    pub fn is_twin(&self) -> bool {
        self.twin.load(Ordering::Acquire)
    }

    pub(crate) fn set_twin(&self, twin: bool) {
        self.twin.store(twin, Ordering::Release);
    }

    /// The local validity of a lease renewed (or taken) by a statement sent at `sent`.
    pub fn lease_valid_until(sent: Instant, lease: Duration) -> Instant {
        sent + lease - (lease / 5)
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.epochs.len() as u32
    }

    /// The partition of a saga.
    pub fn partition(&self, id: &Uuid) -> u32 {
        partition_of(id, self.partitions())
    }

    /// The epoch held on a partition, if held and not locally expired.
    pub fn epoch(&self, partition: u32) -> Option<i64> {
        let e = self.epochs.get(partition as usize)?.load(Ordering::Acquire);
        let until = self
            .valid_until
            .get(partition as usize)?
            .load(Ordering::Acquire);
        (e > 0 && until > self.ms_since_origin(Instant::now())).then_some(e)
    }

    /// Held partitions with their epochs, expired or not (what the lease loop renews).
    pub fn recorded(&self) -> Vec<(u32, i64)> {
        (0..self.partitions())
            .filter_map(|p| {
                let e = self.epochs[p as usize].load(Ordering::Acquire);
                (e > 0).then_some((p, e))
            })
            .collect()
    }

    /// The fence of a saga's writes, if this instance holds its partition.
    pub fn fence(&self, id: &Uuid) -> Option<Fence> {
        let p = self.partition(id);
        self.epoch(p).map(|epoch| Fence {
            partition: p as i32,
            epoch,
        })
    }

    /// Whether this instance drives the saga.
    pub fn owns(&self, id: &Uuid) -> bool {
        self.fence(id).is_some()
    }

    /// Every held partition with its epoch.
    pub fn held(&self) -> Vec<(u32, i64)> {
        (0..self.partitions())
            .filter_map(|p| self.epoch(p).map(|e| (p, e)))
            .collect()
    }

    /// Asks the lease loop to check the leases now, not at its next round: a fenced read or
    /// write found that a partition changed hands.
    pub fn recheck(&self) {
        self.recheck.notify_one();
    }

    /// Resolves when [`Ownership::recheck`] was called.
    pub async fn recheck_asked(&self) {
        self.recheck.notified().await;
    }

    pub(crate) fn set(&self, partition: u32, epoch: i64) {
        if let Some(slot) = self.epochs.get(partition as usize) {
            slot.store(epoch.max(0), Ordering::Release);
        }
        if epoch <= 0 {
            if let Some(slot) = self.valid_until.get(partition as usize) {
                slot.store(0, Ordering::Release);
            }
        }
    }

    pub(crate) fn clear(&self, partition: u32) {
        self.set(partition, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_sequential_and_random_ids() {
        let n = 64;
        let mut seen = vec![0u32; n as usize];
        for i in 0..6400u128 {
            seen[partition_of(&Uuid::from_u128(i), n) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c == 100), "{seen:?}");
        let mut seen = vec![0u32; n as usize];
        for _ in 0..64_000 {
            seen[partition_of(&Uuid::new_v4(), n) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (700..1300).contains(&c)), "{seen:?}");
    }

    #[test]
    fn ownership_tracks_epochs() {
        let o = Ownership::new("a".into(), 4);
        let id = Uuid::from_u128(6);
        assert_eq!(o.partition(&id), 2);
        assert!(!o.owns(&id));
        o.set(2, 7);
        assert!(!o.owns(&id), "held but never renewed: not valid");
        o.extend(&[2], Instant::now() + Duration::from_secs(60));
        assert_eq!(
            o.fence(&id),
            Some(Fence {
                partition: 2,
                epoch: 7
            })
        );
        assert_eq!(o.held(), vec![(2, 7)]);
        o.clear(2);
        assert!(o.held().is_empty());
    }

    #[test]
    fn a_lease_past_its_local_expiry_is_not_acted_on() {
        let o = Ownership::new("a".into(), 4);
        let id = Uuid::from_u128(6);
        o.set(2, 7);
        o.extend(&[2], Instant::now() + Duration::from_millis(30));
        assert!(o.owns(&id));
        assert!(o.expired().is_empty());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!o.owns(&id), "expired locally");
        assert_eq!(o.fence(&id), None);
        assert_eq!(o.expired(), vec![2]);
        assert_eq!(o.recorded(), vec![(2, 7)], "still to renew or drop");
    }

    #[test]
    fn the_local_expiry_comes_a_fifth_of_the_lease_early() {
        let t = Instant::now();
        let lease = Duration::from_secs(5);
        assert_eq!(
            Ownership::lease_valid_until(t, lease),
            t + Duration::from_secs(4)
        );
    }
}
