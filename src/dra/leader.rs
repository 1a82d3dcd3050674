//! The driver's leader Lease: every node competes for it and only its holder publishes. The
//! Lease protocol is [`crate::leases::protocol`]'s (optimistic concurrency, expiry judged by our
//! own clock): a follower tries every eighth of the duration, the leader renews every third and
//! counts itself leader until the start of its last renewal plus the duration minus a tenth; a
//! failed renewal past that is leadership lost. At a stop the leader releases the Lease, so
//! another takes over at its next try.

use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::clock::later;
use crate::leases::protocol::{self, Acquired, Lease, LeaseApi, Observations};

/// The leader Lease's name for `driver`: `spookd-dra-<driver>` with dots as dashes, cut to a DNS
/// label with a hash when longer.
pub fn leader_lease_name(driver: &str) -> String {
    let name = format!("spookd-dra-{}", driver.replace('.', "-"));
    if name.len() <= 63 {
        return name;
    }
    let hash = crate::hash::stable_hash(&[driver.as_bytes()]);
    let mut cut: String = name.chars().take(54).collect();
    while cut.ends_with('-') {
        cut.pop();
    }
    format!("{cut}-{:08x}", hash as u32)
}

/// Holding the leader Lease.
pub struct Leadership {
    name: String,
    me: String,
    duration: Duration,
    seen: Observations,
    held: Option<Lease>,
    /// Leader until then (the start of the last renewal, plus the duration, minus a margin).
    until: Instant,
}

impl Leadership {
    pub fn new(name: String, me: String, duration: Duration, now: Instant) -> Self {
        Leadership {
            name,
            me,
            duration,
            seen: Observations::default(),
            held: None,
            until: now,
        }
    }

    pub fn is_leader(&self, now: Instant) -> bool {
        self.held.is_some() && now < self.until
    }

    /// Tries to take or renew the Lease; returns when to try next.
    pub fn step(&mut self, api: &mut dyn LeaseApi, now: Instant) -> Instant {
        let valid = later(now, self.duration.saturating_sub(self.duration / 10));
        match self.held.take() {
            Some(held) => match protocol::renew(api, &held, &self.me) {
                Ok(Some(lease)) => {
                    self.held = Some(lease);
                    self.until = valid;
                }
                Ok(None) => warn!("leader Lease {} was taken over; not publishing", self.name),
                Err(e) if now < self.until => {
                    warn!("cannot renew the leader Lease {}: {e}; retrying", self.name);
                    self.held = Some(held);
                }
                Err(e) => warn!(
                    "cannot renew the leader Lease {}: {e}; it has run out, not publishing",
                    self.name
                ),
            },
            None => {
                match protocol::acquire(
                    api,
                    &mut self.seen,
                    &self.name,
                    &self.me,
                    self.duration,
                    now,
                ) {
                    Ok(Acquired::Won(lease)) => {
                        self.held = Some(lease);
                        self.until = valid;
                    }
                    Ok(Acquired::HeldBy(holder)) => debug!("{holder} publishes"),
                    Err(e) => debug!("cannot read the leader Lease {}: {e}", self.name),
                }
            }
        }
        let every = if self.held.is_some() { 3 } else { 8 };
        later(now, (self.duration / every).max(Duration::from_millis(50)))
    }

    /// Gives the Lease up (at a stop), so another node takes over at once.
    pub fn release(&mut self, api: &mut dyn LeaseApi) {
        if let Some(held) = self.held.take() {
            match protocol::release(api, &held, &self.me) {
                Ok(()) => info!("released the leader Lease {}", self.name),
                Err(e) => warn!("cannot release the leader Lease {}: {e}", self.name),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_dns_labels() {
        assert_eq!(leader_lease_name("spookd.dev"), "spookd-dra-spookd-dev");
        let long = leader_lease_name(&format!("{}.io", "a".repeat(60)));
        assert_eq!(long.len(), 63);
    }
}
