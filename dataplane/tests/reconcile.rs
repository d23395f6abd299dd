//! Reconciling maps with a desired state: only the difference is written, state read back
//! from pinned maps equals what was written, and a restarted loader starts from it.

use dataplane::{reconcile::MapState, Datapath, LoadOptions};
use dataplane_common::{allow, EndpointInfo, PolicyKey, PolicyValue};
use testbed::ScratchDatapath;

fn state(n: u32, extra_peer: bool) -> MapState {
    let mut s = MapState::default();
    for i in 0..n {
        s.policy.insert(
            PolicyKey::new(300 + i, 0, 400, 6, 80, 16),
            PolicyValue {
                rule_id: i + 1,
                flags: allow::ENFORCE,
            },
        );
        s.ipcache.insert(
            format!("10.1.{}.{}/32", i / 250, i % 250 + 1)
                .parse()
                .unwrap(),
            300 + i,
        );
    }
    if extra_peer {
        s.policy.insert(
            PolicyKey::new(300, 0, 999, 17, 53, 16),
            PolicyValue {
                rule_id: 77,
                flags: allow::AUDIT,
            },
        );
        s.ipcache.insert("192.0.2.0/24".parse().unwrap(), 999);
        s.ipcache.insert("fd00::/64".parse().unwrap(), 999);
    }
    s.endpoints.insert(
        7,
        EndpointInfo {
            identity: 300,
            isolation: [1, 0],
            ..Default::default()
        },
    );
    s
}

#[test]
fn writes_only_the_difference_and_reads_back() {
    let mut dp = ScratchDatapath::load("reconcile").unwrap();
    let mut actual = dp.read_state().unwrap();
    assert_eq!(actual, MapState::default());
    let a = state(100, false);
    let s1 = dp.reconcile(&mut actual, &a).unwrap();
    assert_eq!((s1.upserts, s1.removals), (201, 0));
    assert_eq!(
        dp.read_state().unwrap(),
        a,
        "the maps hold exactly the desired state"
    );

    let mut b = state(100, true);
    b.policy.remove(&PolicyKey::new(399, 0, 400, 6, 80, 16));
    let s2 = dp.reconcile(&mut actual, &b).unwrap();
    assert_eq!(
        (s2.upserts, s2.removals),
        (3, 1),
        "one new entry, two new prefixes, one removal"
    );
    assert_eq!(
        s2.revision,
        s1.revision + 1,
        "each change bumps the revision once"
    );
    assert_eq!(dp.read_state().unwrap(), b);

    let s3 = dp.reconcile(&mut actual, &b).unwrap();
    assert_eq!(
        (s3.upserts, s3.removals, s3.revision),
        (0, 0, s2.revision),
        "nothing to do, no revision bump"
    );

    // A restarted loader on the same pins starts from the same state.
    let again = Datapath::load(&LoadOptions {
        pin_dir: dp.pin_dir().to_owned(),
        ..LoadOptions::default()
    });
    // Map sizes differ from the scratch ones: a mismatch with pinned maps must be an error, not a silent reuse.
    let err = again
        .err()
        .expect("pinned maps of another size are refused")
        .to_string();
    assert!(
        err.contains("SEPTA_IPCACHE holds 65536 entries, 1048576 were asked for"),
        "{err}"
    );
    let again = Datapath::load(&LoadOptions {
        pin_dir: dp.pin_dir().to_owned(),
        conntrack_entries: 65_536,
        policy_entries: 65_536,
        ipcache_entries: 65_536,
        events_bytes: 1 << 20,
    })
    .unwrap();
    assert_eq!(again.read_state().unwrap(), b);
}
