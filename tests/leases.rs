//! The Lease protocol over real HTTPS (`spookd::leases::protocol::HttpLeaseApi`) against the API stand-in's
//! optimistic concurrency. (The daemon does not use Leases yet: issue #10.)

use std::time::{Duration, Instant};

use spookd::kube::client::Connection;
use spookd::leases::protocol::{
    acquire, release, renew, Acquired, HttpLeaseApi, LeaseApi, LeaseEvent, Observations,
};

use crate::apiserver::{with_credentials, ApiServer, Credentials, Fault};

const D: Duration = Duration::from_secs(40);

fn setup() -> (ApiServer, Credentials, Connection) {
    let (api, creds) = with_credentials("lease test CA");
    let conn = Connection {
        server: api.url(),
        token_file: creds.token.clone(),
        ca_file: creds.ca.clone(),
    };
    (api, creds, conn)
}

#[test]
fn create_get_replace_and_delete_under_optimistic_concurrency() {
    let (server, _creds, conn) = setup();
    let mut api = HttpLeaseApi::new(conn, "spookd");
    let first = api.create("spookd-a.io.x-1", "node1", D).unwrap();
    assert_eq!(first.holder.as_deref(), Some("node1"));
    assert_eq!(first.duration, D);
    let stored = &server.leases()["spookd-a.io.x-1"];
    assert_eq!(stored.managed_by, "spookd");
    assert_eq!(stored.duration, 40);
    assert!(
        stored.renew_time.ends_with('Z') && stored.renew_time.len() == 27,
        "{stored:?}"
    );
    assert_eq!(stored.acquire_time, stored.renew_time);
    // It exists: 409.
    let e = api.create("spookd-a.io.x-1", "node2", D).unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert_eq!(api.get("spookd-a.io.x-1").unwrap(), Some(first.clone()));
    assert_eq!(api.get("nothing").unwrap(), None);
    // Renewed by its holder: a new version, the acquire time kept.
    let renewed = api.update(&first, "node1").unwrap();
    assert_ne!(renewed.resource_version, first.resource_version);
    assert_eq!(renewed.acquire_time, first.acquire_time);
    assert_eq!(renewed.transitions, 0);
    // The old version is stale for everyone.
    assert_eq!(api.update(&first, "node2").unwrap_err().status(), Some(409));
    assert_eq!(api.delete(&first).unwrap_err().status(), Some(409));
    // A new holder: one more transition.
    let taken = api.update(&renewed, "node2").unwrap();
    assert_eq!(taken.holder.as_deref(), Some("node2"));
    assert_eq!(taken.transitions, 1);
    api.delete(&taken).unwrap();
    assert_eq!(api.get("spookd-a.io.x-1").unwrap(), None);
    assert!(server.leases().is_empty());
}

#[test]
fn concurrent_acquisitions_over_https_have_exactly_one_winner() {
    let (server, _creds, conn) = setup();
    for round in 0..20 {
        let name = format!("spookd-a.io.x-{round}");
        let winners: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|n| {
                    let (conn, name) = (conn.clone(), name.clone());
                    s.spawn(move || {
                        let mut api = HttpLeaseApi::new(conn, "spookd");
                        let me = format!("node{n}");
                        let mut seen = Observations::default();
                        match acquire(&mut api, &mut seen, &name, &me, D, Instant::now()).unwrap() {
                            Acquired::Won(lease) => {
                                assert_eq!(lease.holder.as_deref(), Some(me.as_str()));
                                true
                            }
                            Acquired::HeldBy(holder) => {
                                assert_ne!(holder, me);
                                false
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|w| **w).count(), 1, "round {round}");
    }
    assert_eq!(server.leases().len(), 20);
}

#[test]
fn renew_release_and_api_errors() {
    let (server, _creds, conn) = setup();
    let mut a = HttpLeaseApi::new(conn.clone(), "spookd");
    let mut b = HttpLeaseApi::new(conn, "spookd");
    let (mut a_seen, mut b_seen) = (Observations::default(), Observations::default());
    let t0 = Instant::now();
    let Acquired::Won(held) = acquire(&mut a, &mut a_seen, "l", "node-a", D, t0).unwrap() else {
        panic!()
    };
    let held = renew(&mut a, &held, "node-a").unwrap().unwrap();
    assert_eq!(
        acquire(&mut b, &mut b_seen, "l", "node-b", D, t0).unwrap(),
        Acquired::HeldBy("node-a".into())
    );
    // An outage answers errors, never a wrong holder.
    server.fail_next(&[Fault::Status(500, None)]);
    assert_eq!(
        acquire(&mut b, &mut b_seen, "l", "node-b", D, t0)
            .unwrap_err()
            .status(),
        Some(500)
    );
    server.fail_next(&[Fault::Status(403, None)]);
    assert_eq!(
        renew(&mut a, &held, "node-a").unwrap_err().status(),
        Some(403)
    );
    // Released: B gets it at once.
    release(&mut a, &held, "node-a").unwrap();
    let got = acquire(&mut b, &mut b_seen, "l", "node-b", D, t0).unwrap();
    assert!(matches!(got, Acquired::Won(l) if l.holder.as_deref() == Some("node-b")));
    // A's stale renewal finds it gone or moved: lost, not an error.
    assert_eq!(renew(&mut a, &held, "node-a").unwrap(), None);
}

#[test]
fn a_watch_from_the_list_version_sees_every_change_after_it() {
    let (_server, _creds, conn) = setup();
    let mut a = HttpLeaseApi::new(conn.clone(), "spookd");
    let first = a.create("spookd-a.io.x-1", "node1", D).unwrap();
    let (listed, version) = a.list_at().unwrap();
    assert_eq!(listed, vec![first.clone()]);
    // Changes after the list, before the watch starts, are not lost.
    let renewed = a.update(&first, "node1").unwrap();
    let other = a.create("spookd-a.io.x-2", "node2", D).unwrap();
    let mut watcher = HttpLeaseApi::new(conn, "spookd");
    let mut events = watcher.watch(&version, Duration::from_secs(5)).unwrap();
    let mut next = || events.next().unwrap().unwrap();
    let mut replayed = vec![next(), next()];
    replayed.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        replayed,
        [LeaseEvent::Put(renewed.clone()), LeaseEvent::Put(other)]
    );
    // Live: a takeover and a release arrive as they happen.
    let taken = a.update(&renewed, "node3").unwrap();
    assert_eq!(next(), LeaseEvent::Put(taken.clone()));
    a.delete(&taken).unwrap();
    match next() {
        LeaseEvent::Deleted(name, at) => {
            assert_eq!(name, "spookd-a.io.x-1");
            assert!(at.parse::<u64>().unwrap() > taken.resource_version.parse().unwrap());
        }
        other => panic!("{other:?}"),
    }
}
