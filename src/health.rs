//! TCP health probes of devices: one thread (`spookd-probe`), non-blocking connects, bounded.
//!
//! The state thread sends the whole set of probes ([`Prober::set`]) after every config that changes
//! it; [`Schedule`] keeps unchanged probes as they are, retunes changed ones and drops removed ones.
//! The thread starts due probes as non-blocking connects (at most [`MAX_IN_FLIGHT`] at once) and
//! sleeps in one `poll(2)` on those sockets and an eventfd that [`Prober::set`] and the handle's
//! drop write to, so it wakes only for work. It reports a device's health to the state thread
//! ([`Msg::Health`]) only when it changes:
//!
//! - a probed device is Healthy until its first probe, whose result sets its health at once;
//! - after that, `failureThreshold` consecutive failures make it Unhealthy and `successThreshold`
//!   consecutive successes make it Healthy again.
//!
//! A probe succeeds when the TCP handshake completes within `timeout` (the kubelet's tcpSocket
//! probe does the same); the connection is then reset rather than closed, so thousands of probes
//! leave no TIME_WAIT sockets behind. First probes are spread over up to [`FIRST_SPREAD`] and every
//! later one is jittered by ±[`JITTER`] of its interval, so a thousand devices never probe in the
//! same millisecond. A probe may also start up to [`JITTER`] of its interval late ("timer slack"):
//! the thread wakes when the first probe's slack runs out and starts every probe already due, so
//! probes share wakeups (a thousand probes at 10 s intervals: about two wakeups a second, not 100).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use log::debug;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::clock::later;
use crate::config::HealthCheck;
use crate::random::random_unit;
use crate::state::msg::{DeviceKey, Msg, ProbeSet};
use crate::worker::Worker;

/// Most connects in flight at once; more due probes wait for a free slot.
pub const MAX_IN_FLIGHT: usize = 64;

/// New (and retuned) probes start at a random point within this, or their interval if shorter.
pub const FIRST_SPREAD: Duration = Duration::from_secs(2);

/// Each next probe is due after its interval times 1 ± this.
pub const JITTER: f64 = 0.05;

/// Handle of the prober thread; dropping it stops the thread.
pub struct Prober {
    tx: Sender<ProbeSet>,
    /// Wakes the thread's `poll(2)` after a send (or the channel's disconnection).
    waker: Arc<OwnedFd>,
    _worker: Worker,
}

impl Prober {
    pub fn spawn(state: Sender<Msg>) -> io::Result<Prober> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let waker = Arc::new(rustix::event::eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?);
        let thread_waker = waker.clone();
        let worker = Worker::spawn("spookd-probe", move || run(&rx, &thread_waker, &state))?;
        Ok(Prober {
            tx,
            waker,
            _worker: worker,
        })
    }

    /// Replaces the set of probes.
    pub fn set(&self, probes: ProbeSet) {
        // Fails only once the thread has ended, at shutdown.
        let _ = self.tx.send(probes);
        wake(&self.waker);
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        // Disconnect the channel and wake the thread, so it ends before `_worker` waits for it.
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.tx, closed));
        wake(&self.waker);
    }
}

fn wake(waker: &OwnedFd) {
    // Fails only if the counter would overflow: the thread is then already due to wake.
    let _ = rustix::io::write(waker, &1u64.to_ne_bytes());
}

/// One probe's schedule and counters.
#[derive(Debug)]
struct Probe {
    check: HealthCheck,
    next: Instant,
    /// `None` until the first result.
    healthy: Option<bool>,
    /// Consecutive results against `healthy`.
    streak: u32,
    /// Bumped when the probe is retuned, so a result of the old settings is ignored.
    generation: u64,
    /// Retuned and not yet probed: its first result is reported even when the health stays, so
    /// what the probe last saw is of the new target, not the old one.
    fresh: bool,
}

/// A probe result that changes a device's health.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub key: DeviceKey,
    pub healthy: bool,
}

/// The probes' schedules and thresholds: no I/O, so it is tested with made-up instants.
#[derive(Debug, Default)]
pub struct Schedule {
    probes: BTreeMap<DeviceKey, Probe>,
    generation: u64,
}

/// A probe to start now; hand it back to [`Schedule::record`] with the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub key: DeviceKey,
    pub target: SocketAddr,
    pub timeout: Duration,
    generation: u64,
}

impl Schedule {
    /// Applies a new set: unchanged probes keep their schedule and health; changed ones keep their
    /// health and start counting anew; removed ones are forgotten.
    pub fn set(&mut self, set: ProbeSet, now: Instant, random: &mut impl FnMut() -> f64) {
        self.probes.retain(|key, _| set.contains_key(key));
        for (key, check) in set {
            if self.probes.get(&key).is_some_and(|p| p.check == check) {
                continue;
            }
            self.generation += 1;
            let first = check.interval.min(FIRST_SPREAD).mul_f64(random());
            let healthy = self.probes.get(&key).and_then(|p| p.healthy);
            self.probes.insert(
                key,
                Probe {
                    check,
                    next: later(now, first),
                    healthy,
                    streak: 0,
                    generation: self.generation,
                    fresh: true,
                },
            );
        }
    }

    /// When the thread must wake to start probes: the earliest end of a waiting probe's slack
    /// ([`JITTER`] of its interval after it is due).
    pub fn next_wake(&self) -> Option<Instant> {
        self.probes
            .values()
            .map(|p| later(p.next, p.check.interval.mul_f64(JITTER)))
            .min()
    }

    /// Takes up to `limit` probes due at `now`, earliest first; each is not due again until its
    /// result is recorded.
    pub fn take_due(&mut self, now: Instant, limit: usize) -> Vec<Due> {
        let mut due: Vec<(&DeviceKey, &mut Probe)> = self
            .probes
            .iter_mut()
            .filter(|(_, p)| p.next <= now)
            .collect();
        due.sort_by_key(|(_, p)| p.next);
        due.into_iter()
            .take(limit)
            .map(|(key, p)| {
                // Parked far ahead until `record` reschedules it.
                p.next = later(now, Duration::from_secs(86_400 * 365));
                Due {
                    key: key.clone(),
                    target: p.check.tcp,
                    timeout: p.check.timeout,
                    generation: p.generation,
                }
            })
            .collect()
    }

    /// Records a result of a probe started at `started`; returns the change of health, if any,
    /// or the health as it stays for a retuned probe's first result.
    pub fn record(
        &mut self,
        due: &Due,
        ok: bool,
        started: Instant,
        random: &mut impl FnMut() -> f64,
    ) -> Option<Change> {
        let probe = self.probes.get_mut(&due.key)?;
        if probe.generation != due.generation {
            return None;
        }
        let factor = 1.0 + JITTER * (2.0 * random() - 1.0);
        probe.next = later(started, probe.check.interval.mul_f64(factor));
        let changed = match probe.healthy {
            None => true,
            Some(h) if h == ok => {
                probe.streak = 0;
                false
            }
            Some(_) => {
                probe.streak += 1;
                let threshold = if ok {
                    probe.check.success_threshold
                } else {
                    probe.check.failure_threshold
                };
                probe.streak >= threshold
            }
        };
        let fresh = std::mem::take(&mut probe.fresh);
        if changed {
            probe.healthy = Some(ok);
            probe.streak = 0;
        } else if !fresh {
            return None;
        }
        Some(Change {
            key: due.key.clone(),
            healthy: probe.healthy.unwrap_or(ok),
        })
    }
}

/// A connect in progress.
struct InFlight {
    due: Due,
    fd: OwnedFd,
    started: Instant,
    deadline: Instant,
}

/// How a connect began.
enum Begun {
    Done(Result<(), io::Error>),
    Pending(OwnedFd),
}

/// Starts a non-blocking connect to `addr`.
fn begin(addr: SocketAddr) -> Begun {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let fd = match rustix::net::socket_with(family, SocketType::STREAM, flags, None) {
        Ok(fd) => fd,
        Err(e) => return Begun::Done(Err(e.into())),
    };
    // Closing with linger 0 resets the connection: no TIME_WAIT per probe on our side.
    let _ = rustix::net::sockopt::set_socket_linger(&fd, Some(Duration::ZERO));
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => Begun::Done(Ok(())),
        Err(Errno::INPROGRESS) => Begun::Pending(fd),
        Err(e) => Begun::Done(Err(e.into())),
    }
}

/// The thread: start due probes, wait for connects, report changes; ends when its handle drops.
fn run(rx: &Receiver<ProbeSet>, waker: &OwnedFd, state: &Sender<Msg>) {
    let mut schedule = Schedule::default();
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut random = random_unit;
    loop {
        loop {
            match rx.try_recv() {
                Ok(set) => schedule.set(set, Instant::now(), &mut random),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        let free = MAX_IN_FLIGHT - in_flight.len();
        for due in schedule.take_due(now, free) {
            match begin(due.target) {
                Begun::Pending(fd) => in_flight.push(InFlight {
                    deadline: later(now, due.timeout),
                    due,
                    fd,
                    started: now,
                }),
                Begun::Done(result) => {
                    report(&mut schedule, &due, result, now, state, &mut random);
                }
            }
        }
        wait(&mut in_flight, waker, &mut schedule, state, &mut random);
    }
}

/// Sleeps in `poll(2)` on the waker and the connects in flight until one of them is ready, a
/// connect's deadline passes or probes must start; then records every finished or timed-out one.
fn wait(
    in_flight: &mut Vec<InFlight>,
    waker: &OwnedFd,
    schedule: &mut Schedule,
    state: &Sender<Msg>,
    random: &mut impl FnMut() -> f64,
) {
    let now = Instant::now();
    let mut until = in_flight.iter().map(|f| f.deadline).min();
    if in_flight.len() < MAX_IN_FLIGHT {
        until = until.into_iter().chain(schedule.next_wake()).min();
    }
    let ready: Vec<bool> = {
        let mut fds = Vec::with_capacity(1 + in_flight.len());
        fds.push(PollFd::new(waker, PollFlags::IN));
        fds.extend(in_flight.iter().map(|f| PollFd::new(&f.fd, PollFlags::OUT)));
        // Beyond what a Timespec holds (never, in practice): wait for an event.
        let timeout =
            until.and_then(|at| Timespec::try_from(at.saturating_duration_since(now)).ok());
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) => fds.iter().map(|p| !p.revents().is_empty()).collect(),
            // EINTR: look again on the next turn.
            Err(_) => vec![false; fds.len()],
        }
    };
    let mut ready = ready.into_iter();
    if ready.next().unwrap_or(false) {
        // Reset the eventfd's counter; the caller reads the channel.
        let _ = rustix::io::read(waker, &mut [0u8; 8]);
    }
    let now = Instant::now();
    let mut finished = Vec::new();
    // `ready` has one entry per connect, in order; dropping a finished one closes its socket.
    in_flight.retain(|f| {
        let result = if ready.next().unwrap_or(false) {
            match rustix::net::sockopt::socket_error(&f.fd) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) | Err(e) => Err(io::Error::from(e)),
            }
        } else if now >= f.deadline {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", f.due.timeout),
            ))
        } else {
            return true;
        };
        finished.push((f.due.clone(), f.started, result));
        false
    });
    for (due, started, result) in finished {
        report(schedule, &due, result, started, state, random);
    }
}

fn report(
    schedule: &mut Schedule,
    due: &Due,
    result: Result<(), io::Error>,
    started: Instant,
    state: &Sender<Msg>,
    random: &mut impl FnMut() -> f64,
) {
    let (resource, id) = &due.key;
    if let Err(e) = &result {
        debug!("{resource} {id}: probe of {} failed: {e}", due.target);
    }
    let ok = result.is_ok();
    if let Some(change) = schedule.record(due, ok, started, random) {
        let detail = match result {
            Ok(()) => format!("{} accepts connections", due.target),
            Err(e) => format!("{}: {e}", due.target),
        };
        let (resource, id) = change.key;
        let _ = state.send(Msg::Health {
            resource,
            id,
            healthy: change.healthy,
            detail,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InstanceId, ResourceName};

    fn key(id: &str) -> DeviceKey {
        (
            ResourceName::try_from("a.io/x".to_owned()).unwrap(),
            InstanceId::try_from(id.to_owned()).unwrap(),
        )
    }

    fn check(port: u16, interval_ms: u64, failures: u32, successes: u32) -> HealthCheck {
        HealthCheck {
            tcp: SocketAddr::from(([127, 0, 0, 1], port)),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(interval_ms / 2),
            failure_threshold: failures,
            success_threshold: successes,
        }
    }

    fn half() -> f64 {
        0.5
    }

    /// Runs one probe of `id` due at `now` with result `ok`; returns the change.
    fn probe(s: &mut Schedule, now: Instant, ok: bool) -> Option<bool> {
        let due = s.take_due(now, 1);
        assert_eq!(due.len(), 1, "one probe due at {now:?}");
        s.record(&due[0], ok, now, &mut half).map(|c| c.healthy)
    }

    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.set([(key("1"), check(1, 1000, 3, 2))].into(), t0, &mut half);
        // Spread: half of min(interval, FIRST_SPREAD); the wake comes at the end of the slack.
        assert_eq!(s.next_wake(), Some(t0 + Duration::from_millis(550)));
        assert!(s.take_due(t0, 10).is_empty());
        let mut t = t0 + Duration::from_millis(500);
        assert_eq!(probe(&mut s, t, true), Some(true));
        // Jitter at 0.5 is none: due exactly one interval later, woken within the slack.
        t += Duration::from_millis(1000);
        assert_eq!(s.next_wake(), Some(t + Duration::from_millis(50)));
        assert_eq!(probe(&mut s, t, false), None);
        t += Duration::from_secs(1);
        assert_eq!(probe(&mut s, t, false), None);
        t += Duration::from_secs(1);
        assert_eq!(probe(&mut s, t, false), Some(false), "third failure");
        t += Duration::from_secs(1);
        assert_eq!(probe(&mut s, t, true), None);
        // A failure between resets the count of successes.
        t += Duration::from_secs(1);
        assert_eq!(probe(&mut s, t, false), None);
        t += Duration::from_secs(1);
        assert_eq!(probe(&mut s, t, true), None);
        t += Duration::from_secs(1);
        assert_eq!(probe(&mut s, t, true), Some(true), "second success");
    }

    #[test]
    fn a_first_failure_is_unhealthy_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.set([(key("1"), check(1, 200, 3, 1))].into(), t0, &mut half);
        assert_eq!(
            probe(&mut s, t0 + Duration::from_millis(100), false),
            Some(false)
        );
    }

    #[test]
    fn reload_keeps_unchanged_retunes_changed_drops_removed() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.set(
            [
                (key("1"), check(1, 1000, 1, 1)),
                (key("2"), check(2, 1000, 1, 1)),
                (key("3"), check(3, 1000, 1, 1)),
            ]
            .into(),
            t0,
            &mut half,
        );
        let t = t0 + Duration::from_millis(500);
        let due = s.take_due(t, 10);
        assert_eq!(due.len(), 3);
        for d in &due {
            s.record(d, false, t, &mut half);
        }
        // 1 unchanged, 2 retuned (interval), 3 removed.
        s.set(
            [
                (key("1"), check(1, 1000, 1, 1)),
                (key("2"), check(2, 4000, 1, 1)),
            ]
            .into(),
            t,
            &mut half,
        );
        assert_eq!(s.probes.len(), 2);
        assert_eq!(s.probes[&key("1")].next, t + Duration::from_secs(1));
        assert_eq!(s.probes[&key("1")].healthy, Some(false));
        // Retuned: spread anew, health kept (no flip back to Healthy).
        assert_eq!(s.probes[&key("2")].next, t + Duration::from_secs(1));
        assert_eq!(s.probes[&key("2")].healthy, Some(false));
        // A result of the old settings is ignored.
        assert_eq!(s.record(&due[1], true, t, &mut half), None);
        assert_eq!(s.probes[&key("2")].healthy, Some(false));
        // A removed probe's late result is ignored.
        assert_eq!(s.record(&due[2], true, t, &mut half), None);
        // The retuned probe's first result is reported though its health stays (what it last
        // saw is then of the new target); later ones only when the health changes, as for 1.
        let t = t + Duration::from_secs(1);
        let due = s.take_due(t, 10);
        let results: Vec<Option<Change>> = due
            .iter()
            .map(|d| s.record(d, false, t, &mut half))
            .collect();
        assert_eq!(
            results,
            [
                None,
                Some(Change {
                    key: key("2"),
                    healthy: false
                })
            ]
        );
        let t = t + Duration::from_secs(4);
        let due = s.take_due(t, 10);
        assert_eq!(due.len(), 2);
        assert!(due
            .iter()
            .all(|d| s.record(d, false, t, &mut half).is_none()));
    }

    #[test]
    fn take_due_is_bounded_and_earliest_first() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        let mut n = 0.0;
        let mut spread = || {
            n += 0.1;
            n
        };
        let set: ProbeSet = (0..5)
            .map(|i| (key(&i.to_string()), check(1, 1000, 1, 1)))
            .collect();
        s.set(set, t0, &mut spread);
        let t = t0 + Duration::from_secs(1);
        let first = s.take_due(t, 2);
        let ids: Vec<&str> = first.iter().map(|d| d.key.1.as_str()).collect();
        assert_eq!(ids, ["0", "1"]);
        assert_eq!(s.take_due(t, 10).len(), 3);
        assert!(s.take_due(t, 10).is_empty(), "started probes are not due");
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.set([(key("1"), check(1, 1000, 1, 1))].into(), t0, &mut half);
        for r in [0.0, 0.999_999] {
            let due = s.take_due(t0 + Duration::from_secs(100), 1);
            s.record(&due[0], true, t0, &mut || r);
            let due = s.probes[&key("1")].next - t0;
            assert!(
                due >= Duration::from_millis(950) && due <= Duration::from_millis(1050),
                "{due:?}"
            );
        }
    }

    #[test]
    fn connect_to_a_closed_local_port_fails_and_to_a_listener_succeeds() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let outcome = |addr| match begin(addr) {
            Begun::Done(r) => r.is_ok(),
            Begun::Pending(fd) => {
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                let t = Timespec {
                    tv_sec: 5,
                    tv_nsec: 0,
                };
                rustix::event::poll(&mut fds, Some(&t)).unwrap();
                matches!(rustix::net::sockopt::socket_error(&fd), Ok(Ok(())))
            }
        };
        assert!(outcome(open));
        assert!(!outcome(closed));
    }
}
