//! Acks for one channel's deliveries when they are settled out of order, in as few frames as
//! the guarantee allows.
//!
//! A delivery is acked only once the work it caused is durable, and deliveries finish in any
//! order. One `basic.ack` per delivery costs the broker a frame and a message between its
//! channel and queue processes each; one `basic.ack` with `multiple` set acks every delivery
//! of the channel up to its tag. Delivery tags on a channel are 1, 2, 3, ... whichever of its
//! consumers they go to, so [`Acks`] (one per channel, shared by all its consumers) sends a
//! multiple ack only over a run of tags that were all settled: no delivery is acked before
//! its own work is done, even one not yet seen. While one ack frame is on its way, the acks
//! settled meanwhile wait for the next frame: a busy channel sends few frames, an idle one
//! sends each at once.
//!
//! A delivery that stays unsettled (held for a retry, slow, or dropped by a stopping
//! consumer) would hold back the acks of every later one and, through the prefetch window,
//! the whole channel. Once the run has been stuck for [`Acks::STALL`], the deliveries settled
//! after the gap are acked one by one; if it stays stuck over [`Acks::MAX_TRACKED`] of them,
//! the channel acks one by one for the rest of its life (memory stays bounded).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::options::BasicAckOptions;
use lapin::Channel;

/// The acks of one channel's deliveries: create it with the channel, before its first
/// consumer, and settle every delivery of every consumer of the channel exactly once:
/// [`ack`](Acks::ack), or reject/nack it yourself and then say so with
/// [`settled_without_ack`](Acks::settled_without_ack).
pub struct Acks {
    channel: Channel,
    state: Mutex<State>,
}

struct State {
    /// Every tag below is acked or rejected.
    low: u64,
    /// Settled tags at or above `low` (acked, to be acked, or rejected).
    settled: BTreeSet<u64>,
    /// Settled tags whose ack is still to be sent (a subset of `settled`, or, once
    /// `one_by_one`, everything there is to send).
    unsent: BTreeSet<u64>,
    /// Since when the run has been stuck at `low` with later tags settled.
    stuck_since: Option<Instant>,
    /// Stuck for good: every ack is sent alone.
    one_by_one: bool,
    /// An ack frame is being sent; its sender sends the next one too.
    sending: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            low: 1,
            settled: BTreeSet::new(),
            unsent: BTreeSet::new(),
            stuck_since: None,
            one_by_one: false,
            sending: false,
        }
    }
}

/// The frames of one round.
#[derive(Debug, PartialEq)]
struct Round {
    /// Ack every delivery up to and including this tag.
    upto: Option<u64>,
    /// Ack these alone.
    singles: Vec<u64>,
}

impl State {
    fn settle(&mut self, tag: u64, needs_ack: bool) {
        if tag < self.low {
            return;
        }
        if needs_ack {
            self.unsent.insert(tag);
        }
        // Once acking one by one, no run is tracked any more.
        if !self.one_by_one {
            self.settled.insert(tag);
        }
    }

    /// What can be acked now, taken out of `unsent`. Each round costs what it sends.
    fn take(&mut self, now: Instant) -> Option<Round> {
        if self.one_by_one {
            let singles: Vec<u64> = std::mem::take(&mut self.unsent).into_iter().collect();
            return (!singles.is_empty()).then_some(Round {
                upto: None,
                singles,
            });
        }
        let mut upto = None;
        let low = self.low;
        while self.settled.remove(&self.low) {
            if self.unsent.remove(&self.low) {
                upto = Some(self.low);
            }
            self.low += 1;
        }
        if self.low != low || self.settled.is_empty() {
            self.stuck_since = None;
        }
        let mut singles = Vec::new();
        if !self.settled.is_empty() {
            let since = *self.stuck_since.get_or_insert(now);
            if now.duration_since(since) >= Acks::STALL {
                singles = std::mem::take(&mut self.unsent).into_iter().collect();
                if self.settled.len() > Acks::MAX_TRACKED {
                    self.settled.clear();
                    self.one_by_one = true;
                }
            }
        }
        if upto.is_none() && singles.is_empty() {
            return None;
        }
        Some(Round { upto, singles })
    }
}

impl Acks {
    /// How long an unsettled delivery may hold back the acks of later ones.
    pub const STALL: Duration = Duration::from_millis(500);
    /// How many deliveries settled behind a stuck one are tracked before the channel acks
    /// one by one for good.
    pub const MAX_TRACKED: usize = 100_000;

    /// The acks of the deliveries of `channel`, a channel no delivery arrived on yet.
    pub fn new(channel: Channel) -> Self {
        Acks {
            channel,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // No panic point lies inside a locked section: a poisoned state is still whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A delivery was rejected or nacked, its frame sent: it holds back nothing any more.
    pub fn settled_without_ack(&self, tag: u64) {
        self.state().settle(tag, false);
    }

    /// Acks a delivery whose work is done. Returns once its ack is sent, or is left to a
    /// frame another call is sending, or waits behind an earlier delivery not yet settled.
    pub async fn ack(&self, tag: u64) -> Result<(), lapin::Error> {
        let mut round = {
            let mut s = self.state();
            s.settle(tag, true);
            if s.sending {
                return Ok(());
            }
            match s.take(Instant::now()) {
                Some(round) => {
                    s.sending = true;
                    round
                }
                None => return Ok(()),
            }
        };
        loop {
            let sent = self.send(&round).await;
            let mut s = self.state();
            if sent.is_err() {
                s.sending = false;
                return sent;
            }
            match s.take(Instant::now()) {
                Some(next) => round = next,
                None => {
                    s.sending = false;
                    return Ok(());
                }
            }
        }
    }

    async fn send(&self, round: &Round) -> Result<(), lapin::Error> {
        if let Some(tag) = round.upto {
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
        }
        for &tag in &round.singles {
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(upto: Option<u64>, singles: &[u64]) -> Option<Round> {
        Some(Round {
            upto,
            singles: singles.to_vec(),
        })
    }

    #[test]
    fn acks_the_run_of_settled_tags_from_the_first_one() {
        let now = Instant::now();
        let mut s = State::default();
        for t in [2, 1, 4, 5] {
            s.settle(t, true);
        }
        assert_eq!(s.take(now), round(Some(2), &[]));
        assert_eq!(
            s.take(now),
            None,
            "4 and 5 wait for 3, settled or not yet seen"
        );
        s.settle(3, true);
        assert_eq!(s.take(now), round(Some(5), &[]));
        assert_eq!(s.low, 6);
        assert!(s.settled.is_empty() && s.unsent.is_empty());
    }

    #[test]
    fn a_tag_not_yet_seen_holds_back_the_tags_after_it() {
        let now = Instant::now();
        let mut s = State::default();
        s.settle(2, true);
        assert_eq!(
            s.take(now),
            None,
            "tag 1 may still be on its way to a consumer"
        );
    }

    #[test]
    fn a_rejected_tag_lets_the_run_through_without_being_named() {
        let now = Instant::now();
        let mut s = State::default();
        s.settle(1, true);
        s.settle(2, false);
        assert_eq!(s.take(now), round(Some(1), &[]));
        s.settle(3, false);
        assert_eq!(s.take(now), None, "nothing to ack, the run moves on");
        assert_eq!(s.low, 4);
    }

    #[test]
    fn a_stuck_run_acks_later_tags_alone_then_the_run_never_names_them() {
        let t0 = Instant::now();
        let mut s = State::default();
        s.settle(1, true);
        s.settle(3, true);
        s.settle(4, true);
        assert_eq!(s.take(t0), round(Some(1), &[]));
        assert_eq!(s.take(t0 + Acks::STALL / 2), None);
        assert_eq!(s.take(t0 + Acks::STALL), round(None, &[3, 4]));
        // 2 settles at last: the multiple ack names it, not 3 or 4 (acked already).
        s.settle(2, true);
        assert_eq!(s.take(t0 + Acks::STALL), round(Some(2), &[]));
        s.settle(5, true);
        assert_eq!(s.take(t0 + Acks::STALL), round(Some(5), &[]));
    }

    #[test]
    fn stuck_for_good_it_acks_one_by_one_and_forgets() {
        let t0 = Instant::now();
        let mut s = State::default();
        for t in 2..(Acks::MAX_TRACKED as u64 + 3) {
            s.settle(t, true);
        }
        assert_eq!(s.take(t0), None);
        let late = t0 + Acks::STALL;
        let r = s.take(late).map(|r| r.singles.len());
        assert_eq!(r, Some(Acks::MAX_TRACKED + 1));
        assert!(s.one_by_one && s.settled.is_empty() && s.unsent.is_empty());
        s.settle(1, true);
        s.settle(200_000, true);
        assert_eq!(s.take(late), round(None, &[1, 200_000]));
        assert!(s.unsent.is_empty());
    }
}
