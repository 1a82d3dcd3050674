//! What /metrics, /healthz, /readyz and `spookd status` read: the counters, each resource's
//! devices and registration, what the probes saw and who holds each shared device.

use std::time::{Duration, Instant};

use super::msg::{DeviceKey, Snapshot};
use super::{Backend, State};

impl<B: Backend> State<B> {
    /// The counters, and per resource its devices and whether it is registered.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.stats.clone();
        s.dra = self.dra.as_ref().map(|d| d.status.clone());
        s.configured = self.have_config;
        if s.source_problem.is_none() {
            if let Some(silent) = self.source.as_ref().and_then(|p| p.stalled(Instant::now())) {
                s.source_problem = Some(format!(
                    "no read of the config finished for {:?} (stuck in a system call?)",
                    Duration::from_secs(silent.as_secs())
                ));
            }
        }
        s.resources = self
            .served
            .iter()
            .map(|(r, served)| {
                let registered = served.server.as_ref().is_some_and(|l| l.registered);
                let unhealthy = served.unhealthy.len();
                let healthy = served.devices.len() - unhealthy;
                (r.to_string(), (healthy, unhealthy, registered))
            })
            .collect();
        s.devices = self
            .served
            .iter()
            .flat_map(|(r, served)| {
                served.devices.iter().map(move |d| {
                    let healthy = !served.unhealthy.contains(&d.id);
                    ((r.to_string(), d.id.to_string()), healthy)
                })
            })
            .collect();
        s.node = self.node.to_string();
        let key = |(r, id): &DeviceKey| (r.to_string(), id.to_string());
        s.probe_details = (self.probes.iter())
            .filter_map(|(k, p)| Some((key(k), p.seen.as_deref()?.to_owned())))
            .collect();
        s.lease_holders = (self.held_by_others.iter())
            .map(|(k, holder)| (key(k), holder.clone()))
            .chain(
                self.held_here
                    .iter()
                    .map(|k| (key(k), self.node.to_string())),
            )
            .collect();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::msg::{Msg, Progress};
    use super::super::test_support::*;
    use crate::config::{Config, ConfigError};
    use futures_channel::oneshot;
    use std::time::Duration;

    #[test]
    fn a_silent_source_shows_in_the_snapshot() {
        let (mut s, _log, now) = setup();
        s.handle(config(TWO), now);
        assert_eq!(s.snapshot().source_problem, None);
        let progress = Progress::new(Duration::ZERO);
        s.handle(Msg::SourceProgress(progress.clone()), now);
        std::thread::sleep(Duration::from_millis(5));
        let problem = s.snapshot().source_problem.unwrap();
        assert!(
            problem.starts_with("no read of the config finished for"),
            "{problem}"
        );
        // A read error names itself instead.
        let err = ConfigError::NotRegular {
            path: "/c".into(),
            kind: "a FIFO",
        };
        s.handle(Msg::ConfigInvalid(err), now);
        assert_eq!(
            s.snapshot().source_problem.as_deref(),
            Some("cannot read config /c: it is a FIFO, not a regular file")
        );
    }

    #[test]
    fn snapshot_counts_reloads_allocations_and_registrations() {
        let (mut s, _log, now) = setup();
        assert!(!s.snapshot().configured);
        s.handle(config(TWO), now);
        let err = Config::parse(b"deviceMapping: [", "t").unwrap_err();
        s.handle(Msg::ConfigInvalid(err), now);
        s.handle(
            Msg::Registered {
                resource: res("a.io/x"),
                endpoint: "spookd-0.sock".into(),
                result: Ok(()),
            },
            now,
        );
        for ids in [vec!["1".to_string()], vec!["9".to_string()]] {
            let (tx, _rx) = oneshot::channel();
            let msg = Msg::Allocate {
                resource: res("a.io/x"),
                containers: vec![ids],
                reply: tx,
            };
            s.handle(msg, now);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        s.handle(Msg::Snapshot { reply: tx }, now);
        let snap = rx.try_recv().unwrap();
        assert!(snap.configured);
        assert_eq!((snap.reloads_ok, snap.reloads_error), (1, 1));
        assert!(snap.last_reload_success.is_some());
        assert_eq!(snap.resources["a.io/x"], (1, 0, true));
        assert_eq!(snap.resources["b.io/y"], (1, 0, false));
        assert_eq!(snap.allocations[&("a.io/x".to_string(), "ok")], 1);
        assert_eq!(snap.allocations[&("a.io/x".to_string(), "error")], 1);
        assert_eq!(snap.registrations[&("a.io/x".to_string(), "ok")], 1);
    }
}
