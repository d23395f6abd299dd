//! The programs load and pass the verifier; pinned maps are reused by a second load.

use aya::maps::MapData;
use dataplane::Error;
use dataplane_common::{maps, programs, Config};
use testbed::ScratchDatapath;

#[test]
fn programs_pass_the_verifier() {
    let dp = ScratchDatapath::load("verifier").expect("load (verifier log in the error)");
    for name in [programs::TC_FROM_POD, programs::TC_TO_POD] {
        let p = dp.ebpf().program(name).expect("program present");
        assert!(p.fd().is_ok(), "{name} is loaded");
    }
}

#[test]
fn maps_are_pinned_and_reused() {
    let mut first = ScratchDatapath::load("pins").unwrap();
    let dir = first.pin_dir().to_owned();
    for name in [
        maps::CONFIG,
        maps::ENDPOINTS,
        maps::IPCACHE,
        maps::POLICY,
        maps::CONNTRACK,
        maps::EVENTS,
    ] {
        assert!(
            dir.join(name).exists(),
            "{name} pinned under {}",
            dir.display()
        );
    }
    let cfg = Config {
        policy_revision: 41,
        flags: 0,
        deny_event_interval_ns: 7,
    };
    first.set_config(&cfg).unwrap();
    // A second load (an agent restart) sees the same maps.
    let second = dataplane::Datapath::load(&dataplane::LoadOptions {
        pin_dir: dir.clone(),
        conntrack_entries: 65_536,
        policy_entries: 65_536,
        ipcache_entries: 65_536,
        events_bytes: 1 << 20,
    })
    .unwrap();
    assert_eq!(second.config().unwrap(), cfg);
    drop(second);
    let _events = first.take_events().unwrap();
    first.unpin_all().unwrap();
    assert!(
        !dir.exists(),
        "unpin_all removes the pin directory, taken maps included"
    );
}

/// A map pinned under one of septa's names that is not what this build creates (here: another
/// of its maps pinned under the name) is refused before anything uses it, naming the pin and
/// what differs.
#[test]
fn pinned_maps_of_another_shape_are_refused() {
    // (map replaced, map pinned in its place, what the error must say)
    let cases = [
        (
            maps::FRAGS,
            maps::DNS_BUDGET,
            "has 8-byte values, this build uses 4",
        ),
        (maps::DENY_RATELIMIT, maps::CONFIG, "is a Array map"),
        (maps::DNS_ANSWERS, maps::EVENTS, "is the map `SEPTA_EVENTS`"),
    ];
    for (victim, donor, expected) in cases {
        let mut dp = ScratchDatapath::load("mismatch").unwrap();
        let dir = dp.pin_dir().to_owned();
        let impostor = MapData::from_pin(dir.join(donor)).unwrap();
        std::fs::remove_file(dir.join(victim)).unwrap();
        impostor.pin(dir.join(victim)).unwrap();
        match dp.reopen() {
            Err(Error::PinnedMismatch { path, what }) => {
                assert_eq!(path, dir.join(victim), "names the map: {what}");
                assert!(
                    what.contains(expected),
                    "{victim}: `{expected}` in `{what}`"
                );
            }
            Err(e) => panic!("{victim} in place of {donor}: not a pinned mismatch: {e}"),
            Ok(_) => panic!("{victim} in place of {donor}: loaded"),
        }
    }
}

#[test]
fn bad_interfaces_are_clear_errors() {
    let mut dp = ScratchDatapath::load("badif").unwrap();
    let err = dp.attach("septa-no-such-if").unwrap_err().to_string();
    assert!(
        err.contains("septa-no-such-if"),
        "names the interface: {err}"
    );
    let err = hostnet::netns::ifindex("bad\0name")
        .unwrap_err()
        .to_string();
    assert!(err.contains("NUL"), "{err}");
    assert!(
        dp.attached_interfaces().is_empty(),
        "a failed attach leaves nothing behind"
    );
    dp.detach("septa-no-such-if")
        .expect("detaching what is not attached is not an error");
}

#[test]
fn missing_netns_is_a_clear_error() {
    let err = hostnet::netns::in_netns(std::path::Path::new("/run/netns/septa-absent"), || ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("/run/netns/septa-absent"), "{err}");
}

#[test]
fn a_load_that_fails_leaves_no_pins_behind() {
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/septa-test-partial-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    // A map the kernel cannot create, after others were created and pinned.
    let err = dataplane::Datapath::load(&dataplane::LoadOptions {
        pin_dir: dir.clone(),
        conntrack_entries: u32::MAX,
        policy_entries: 65_536,
        ipcache_entries: 65_536,
        events_bytes: 1 << 20,
    })
    .map(|_| ())
    .unwrap_err();
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(left.is_empty(), "{err}: pins left behind: {left:?}");
}
