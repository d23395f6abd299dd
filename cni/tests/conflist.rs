//! Splicing septa into the conflists primary CNIs really write (flannel, Calico, kindnet, the
//! AWS VPC CNI, the CNI spec's bridge example), removing it byte for byte, refusing malformed
//! files with the problem named, choosing the file a runtime uses, and checking own files.
//! A property test covers formattings the fixtures do not.

use std::{path::Path, time::Duration};

use cni::conflist::{
    check_own, choose_primary, contains_septa, entry, splice, temp_name, unsplice, ConfError,
    Splice,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const PRIMARIES: [&str; 5] = [
    "10-flannel.conflist",
    "10-calico.conflist",
    "10-kindnet.conflist",
    "10-aws.conflist",
    "10-bridge.conflist",
];

fn data(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/conflists")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn septa(socket: &str) -> Value {
    entry(
        Path::new(socket),
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
}

fn written(s: Splice) -> Vec<u8> {
    match s {
        Splice::Write(b) => b,
        Splice::Unchanged => panic!("expected a write"),
    }
}

fn plugins(file: &[u8]) -> Vec<Value> {
    let v: Value = serde_json::from_slice(file).unwrap();
    v["plugins"].as_array().unwrap().clone()
}

/// Everything the splice contract promises for one primary without septa.
fn assert_splice_contract(primary: &[u8], e: &Value, what: &str) -> Vec<u8> {
    assert_eq!(
        unsplice(primary).unwrap(),
        None,
        "{what}: nothing to remove"
    );
    assert!(!contains_septa(primary), "{what}");
    let out = written(splice(primary, e).unwrap());
    let (before, after) = (plugins(primary), plugins(&out));
    assert_eq!(after.len(), before.len() + 1, "{what}");
    assert_eq!(
        after[..before.len()],
        before[..],
        "{what}: primary plugins untouched"
    );
    assert_eq!(after.last(), Some(e), "{what}: septa last and equal");
    assert!(contains_septa(&out), "{what}");
    assert_eq!(
        splice(&out, e).unwrap(),
        Splice::Unchanged,
        "{what}: idempotent"
    );
    assert_eq!(
        unsplice(&out).unwrap().as_deref(),
        Some(primary),
        "{what}: unsplice restores the bytes"
    );
    // The top level around `plugins` keeps its bytes too.
    let v: Value = serde_json::from_slice(&out).unwrap();
    let p: Value = serde_json::from_slice(primary).unwrap();
    for (k, x) in p.as_object().unwrap() {
        if k != "plugins" {
            assert_eq!(&v[k], x, "{what}: {k}");
        }
    }
    out
}

#[test]
fn realistic_primaries_splice_idempotently_and_unsplice_byte_for_byte() {
    let e = septa("/run/septa/septa.sock");
    for name in PRIMARIES {
        let primary = data(name);
        let out = assert_splice_contract(&primary, &e, name);
        // The primary CNI rewrites its file (flannel's init container, Calico's install-cni on
        // every restart): splicing again gives the same bytes.
        assert_eq!(written(splice(&primary, &e).unwrap()), out, "{name}");
        // Another socket or wait: the entry is replaced, not added.
        let e2 = entry(
            Path::new("/var/run/septa/other.sock"),
            Duration::from_secs(5),
            Duration::from_secs(3),
        );
        let out2 = written(splice(&out, &e2).unwrap());
        let p2 = plugins(&out2);
        assert_eq!(p2.last(), Some(&e2), "{name}");
        assert_eq!(p2.iter().filter(|p| p["type"] == "septa-cni").count(), 1);
        assert_eq!(
            unsplice(&out2).unwrap().as_deref(),
            Some(&primary[..]),
            "{name}"
        );
    }
}

#[test]
fn the_inserted_entry_reads_like_its_neighbours() {
    let e = septa("/run/septa/septa.sock");
    let text = |name| String::from_utf8(written(splice(&data(name), &e).unwrap())).unwrap();
    assert!(text("10-flannel.conflist").contains(
        "    },\n    {\n      \"type\": \"septa-cni\",\n      \"agentSocket\": \"/run/septa/septa.sock\",\n      \"socketWaitSeconds\": 30,\n      \"timeoutSeconds\": 10\n    }\n  ]\n}\n"
    ));
    let calico = text("10-calico.conflist");
    assert!(
        calico.ends_with("\"timeoutSeconds\": 10\n    }\n  ]\n}"),
        "no final newline added: {calico}"
    );
    let kind = text("10-kindnet.conflist");
    assert!(
        kind.contains("\t},\n\t{\n\t\t\"type\": \"septa-cni\",\n\t\t\"agentSocket\""),
        "{kind}"
    );
    assert!(
        kind.ends_with("\t\t\"timeoutSeconds\": 10\n\t}\n\t]\n}\n"),
        "{kind}"
    );
}

#[test]
fn septa_entries_out_of_place_are_moved_and_duplicates_collapsed() {
    let e = septa("/run/septa/septa.sock");
    let middle = br#"{"cniVersion": "1.0.0", "name": "n", "plugins": [
  {"type": "bridge"},
  {"type": "septa-cni", "agentSocket": "/run/septa/septa.sock", "socketWaitSeconds": 30, "timeoutSeconds": 10},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}"#;
    let out = written(splice(middle, &e).unwrap());
    let p = plugins(&out);
    assert_eq!(
        p.iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["bridge", "portmap", "septa-cni"]
    );
    let several = br#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "septa-cni"}, {"type": "septa-cni", "agentSocket": "/x"}, {"type": "bridge"}, {"type": "septa-cni"}, {"type": "septa-cni"}, {"type": "portmap"}, {"type": "septa-cni"}]}"#;
    let out = written(splice(several, &e).unwrap());
    let p = plugins(&out);
    assert_eq!(p.len(), 3);
    assert_eq!(p[2], e);
    assert_eq!(
        unsplice(several).unwrap().unwrap(),
        br#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}, {"type": "portmap"}]}"#
    );
    // Present, last, but with a different option: rewritten.
    let stale = br#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}, {"type": "septa-cni", "agentSocket": "/run/septa/septa.sock", "socketWaitSeconds": 30, "timeoutSeconds": 11}]}"#;
    assert_eq!(plugins(&written(splice(stale, &e).unwrap()))[1], e);
    // Equal as JSON in another key order or spelling: left alone.
    let same = br#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}, {"timeoutSeconds": 1e1, "socketWaitSeconds": 30, "agentSocket": "\/run\/septa\/septa.sock", "type": "septa-cni"}]}"#;
    assert_eq!(
        splice(same, &e).unwrap(),
        Splice::Write(
            br#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}, {"type": "septa-cni", "agentSocket": "/run/septa/septa.sock", "socketWaitSeconds": 30, "timeoutSeconds": 10}]}"#.to_vec()
        ),
        "1e1 is a float, not the integer 10: a different value"
    );
    let same = br#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}, {"timeoutSeconds": 10, "socketWaitSeconds": 30, "agentSocket": "\/run\/septa\/septa.sock", "type": "septa-cni"}]}"#;
    assert_eq!(splice(same, &e).unwrap(), Splice::Unchanged);
    // Septa alone: not something splice made; uninstall says to remove the file.
    let alone = br#"{"cniVersion": "1.0.0", "plugins": [{"type": "septa-cni"}]}"#;
    assert_eq!(unsplice(alone), Err(ConfError::OnlySepta));
}

#[test]
fn malformed_primaries_get_the_precise_error_and_no_bytes() {
    let e = septa("/run/septa/septa.sock");
    type Is = fn(&ConfError) -> bool;
    let cases: [(&str, Is); 5] = [
        ("truncated.conflist", |x| {
            matches!(x, ConfError::NotJson { line: 13, .. })
        }),
        ("10-mynet.conf", |x| *x == ConfError::SinglePlugin),
        ("plugins-not-array.conflist", |x| {
            *x == ConfError::PluginsNotArray
        }),
        ("duplicate-plugins.conflist", |x| {
            *x == ConfError::DuplicateKey {
                key: "plugins".into(),
            }
        }),
        ("plugin-without-type.conflist", |x| {
            *x == ConfError::PluginWithoutType { index: 1 }
        }),
    ];
    for (name, is) in cases {
        let file = data(&format!("malformed/{name}"));
        let err = splice(&file, &e).unwrap_err();
        assert!(is(&err), "{name}: {err:?}");
        assert_eq!(unsplice(&file).unwrap_err(), err, "{name}");
        assert_eq!(check_own(&file).unwrap_err(), err, "{name}");
        assert!(!contains_septa(&file));
    }
    let msg = splice(&data("malformed/10-mynet.conf"), &e)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(".conflist") && msg.contains("own-file mode"),
        "{msg}"
    );
    let msg = splice(&data("malformed/truncated.conflist"), &e)
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("not JSON at line 13, column"), "{msg}");
    assert_eq!(msg.matches("line").count(), 1, "{msg}");
}

#[test]
fn hostile_shapes_are_refused_by_name() {
    let e = septa("/run/septa/septa.sock");
    let cases: Vec<(&[u8], ConfError)> = vec![
        (b"[]", ConfError::NotObject),
        (b"\"plugins\"", ConfError::NotObject),
        (br#"{"cniVersion": "1.0.0"}"#, ConfError::NoPlugins),
        (
            br#"{"cniVersion": "1.0.0", "plugins": []}"#,
            ConfError::EmptyPlugins,
        ),
        (
            br#"{"cniVersion": "1.0.0", "plugins": [{"type": "a"}, "b"]}"#,
            ConfError::PluginNotObject { index: 1 },
        ),
        (
            br#"{"cniVersion": "1.0.0", "plugins": [{"type": 7}]}"#,
            ConfError::PluginWithoutType { index: 0 },
        ),
        (
            br#"{"plugins": [{"type": "a"}]}"#,
            ConfError::NoCniVersion,
        ),
        (
            br#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge", "TYPE": "septa-cni"}]}"#,
            ConfError::AmbiguousType { index: 0 },
        ),
        (
            br#"{"cniVersion": 1.0, "plugins": [{"type": "a"}]}"#,
            ConfError::CniVersionNotString,
        ),
        (
            br#"{"cniVersion": "0.2.0", "plugins": [{"type": "a"}]}"#,
            ConfError::UnsupportedVersion {
                version: "0.2.0".into(),
            },
        ),
        (
            br#"{"cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.0.0", "1.10.0"], "plugins": [{"type": "a"}]}"#,
            ConfError::UnsupportedVersion {
                version: "1.10.0".into(),
            },
        ),
        (
            br#"{"cniVersion": "1.0.0", "cniVersions": ["1.0"], "plugins": [{"type": "a"}]}"#,
            ConfError::CniVersionsMalformed,
        ),
        (
            br#"{"cniVersion": "1.0.0", "cniVersions": "1.0.0", "plugins": [{"type": "a"}]}"#,
            ConfError::CniVersionsMalformed,
        ),
        // The same key spelt with an escape is the same key to every JSON reader.
        (
            br#"{"cniVersion": "1.0.0", "plugins": [{"type": "a"}], "plu\u0067ins": [{"type": "b"}]}"#,
            ConfError::DuplicateKey {
                key: "plugins".into(),
            },
        ),
        (
            br#"{"cniVersion": "1.0.0", "cniVersion": "0.2.0", "plugins": [{"type": "a"}]}"#,
            ConfError::DuplicateKey {
                key: "cniVersion".into(),
            },
        ),
    ];
    for (file, want) in cases {
        assert_eq!(
            splice(file, &e).unwrap_err(),
            want,
            "{}",
            String::from_utf8_lossy(file)
        );
    }
    // An old version still unsplices: uninstall must always be able to clean up.
    let old = br#"{"cniVersion": "0.2.0", "plugins": [{"type": "a"}, {"type": "septa-cni"}]}"#;
    assert_eq!(
        unsplice(old).unwrap().unwrap(),
        br#"{"cniVersion": "0.2.0", "plugins": [{"type": "a"}]}"#
    );
    for bad in [
        b"".as_slice(),
        b"\xef\xbb\xbf{}",
        b"{\"cniVersion\": \"1.0.0\", \"plugins\": [{\"type\": \"\xff\"}]}",
        b"{} {}",
        b"{\"a\":1,}",
        // Out of any float's range: Go's encoding/json refuses it as well.
        b"{\"cniVersion\": \"1.0.0\", \"plugins\": [{\"type\": \"a\", \"x\": 1e400}]}",
    ] {
        assert!(
            matches!(splice(bad, &e), Err(ConfError::NotJson { .. })),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let deep = format!(
        "{{\"cniVersion\": \"1.0.0\", \"plugins\": [{{\"type\": \"a\", \"x\": {}{}}}]}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(matches!(
        splice(deep.as_bytes(), &e),
        Err(ConfError::NotJson { .. })
    ));
    // The entry itself must be septa's and acceptable to septa-cni.
    let p = data("10-flannel.conflist");
    assert_eq!(
        splice(&p, &json!({"type": "bridge"})),
        Err(ConfError::NotSeptaEntry)
    );
    assert_eq!(
        splice(&p, &json!("septa-cni")),
        Err(ConfError::NotSeptaEntry)
    );
    assert!(matches!(
        splice(&p, &json!({"type": "septa-cni", "agentSockte": "/x"})),
        Err(ConfError::BadSeptaEntry { msg }) if msg.contains("agentSockte")
    ));
}

#[test]
fn every_truncation_and_byte_flip_of_the_fixtures_is_handled_without_panic() {
    let e = septa("/run/septa/septa.sock");
    for name in PRIMARIES {
        let spliced = written(splice(&data(name), &e).unwrap());
        for file in [data(name), spliced] {
            for cut in 0..file.len() {
                let t = &file[..cut];
                let _ = (unsplice(t), check_own(t), contains_septa(t));
                if let Ok(Splice::Write(out)) = splice(t, &e) {
                    assert_eq!(unsplice(&out).unwrap().unwrap(), t);
                }
            }
            for at in 0..file.len() {
                for b in [b'"', b'\\', b']', b',', 0xff] {
                    let mut m = file.clone();
                    m[at] = b;
                    let _ = unsplice(&m);
                    if let Ok(Splice::Write(out)) = splice(&m, &e) {
                        if !contains_septa(&m) {
                            assert_eq!(unsplice(&out).unwrap().unwrap(), m, "{name} @{at}");
                        }
                        assert_eq!(splice(&out, &e).unwrap(), Splice::Unchanged);
                    }
                }
            }
        }
    }
}

#[test]
fn the_primary_is_the_first_configuration_file_in_byte_order() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let dir = names(&[
        "99-loopback.conf",
        "10-flannel.conflist",
        "05-x.conf",
        "10-flannel.conflist.bak",
        &temp_name("10-flannel.conflist"),
        "calico-kubeconfig",
        "00-notes.txt",
        "05-x.conf~",
        "01-upper.CONF",
    ]);
    assert_eq!(choose_primary(&dir, None).unwrap(), "05-x.conf");
    let dir2 = names(&["99-loopback.conf", "10-flannel.conflist", "10-calico.json"]);
    assert_eq!(choose_primary(&dir2, None).unwrap(), "10-calico.json");
    // Byte order: upper case before lower, digits before letters, '-' before '.'.
    let dir3 = names(&["a.conf", "B.conf", "10.conf", "10-a.conf"]);
    assert_eq!(choose_primary(&dir3, None).unwrap(), "10-a.conf");
    // libcni reads hidden files with a configuration extension, and '.' sorts first.
    let dir4 = names(&["10-flannel.conflist", ".old.conflist"]);
    assert_eq!(choose_primary(&dir4, None).unwrap(), ".old.conflist");
    assert_eq!(
        choose_primary(&dir, Some("10-flannel.conflist")).unwrap(),
        "10-flannel.conflist"
    );
    assert_eq!(
        choose_primary(&dir, Some("10-calico.conflist")),
        Err(ConfError::PrimaryMissing {
            name: "10-calico.conflist".into()
        })
    );
    for bad in ["10-flannel.conflist.bak", "../etc/passwd.conf", "", "x"] {
        assert!(
            matches!(
                choose_primary(&dir, Some(bad)),
                Err(ConfError::NotAConfName { .. })
            ),
            "{bad}"
        );
    }
    let none = names(&[
        "calico-kubeconfig",
        ".10-x.conflist.septa-tmp",
        "x.conflist.bak",
    ]);
    assert_eq!(choose_primary(&none, None), Err(ConfError::NoConfFiles));
    assert_eq!(choose_primary(&[], None), Err(ConfError::NoConfFiles));
}

#[test]
fn own_files_need_a_name_a_version_and_septa_once_and_last() {
    let ok = br#"{"cniVersion": "1.0.0", "name": "pods", "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
        {"type": "septa-cni", "agentSocket": "/run/septa/septa.sock", "socketWaitSeconds": 60}]}"#;
    check_own(ok).unwrap();
    let cases: Vec<(&[u8], ConfError)> = vec![
        (
            br#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}, {"type": "septa-cni"}]}"#,
            ConfError::NoName,
        ),
        (
            br#"{"cniVersion": "1.0.0", "name": "", "plugins": [{"type": "bridge"}, {"type": "septa-cni"}]}"#,
            ConfError::NoName,
        ),
        (
            br#"{"cniVersion": "1.0.0", "name": "p", "plugins": [{"type": "bridge"}]}"#,
            ConfError::NoSeptaEntry,
        ),
        (
            br#"{"cniVersion": "1.0.0", "name": "p", "plugins": [{"type": "septa-cni"}, {"type": "bridge"}]}"#,
            ConfError::SeptaNotLast {
                index: 0,
                plugins: 2,
            },
        ),
        (
            br#"{"cniVersion": "1.0.0", "name": "p", "plugins": [{"type": "septa-cni"}]}"#,
            ConfError::SeptaAlone,
        ),
        (
            br#"{"cniVersion": "1.0.0", "name": "p", "plugins": [{"type": "bridge"}, {"type": "septa-cni"}, {"type": "septa-cni"}]}"#,
            ConfError::SeveralSeptaEntries {
                indices: vec![1, 2],
            },
        ),
        (
            br#"{"cniVersion": "0.2.0", "name": "p", "plugins": [{"type": "bridge"}, {"type": "septa-cni"}]}"#,
            ConfError::UnsupportedVersion {
                version: "0.2.0".into(),
            },
        ),
        (
            br#"{"cniVersion": "1.0.0", "name": "p", "plugins": []}"#,
            ConfError::EmptyPlugins,
        ),
    ];
    for (file, want) in cases {
        assert_eq!(
            check_own(file).unwrap_err(),
            want,
            "{}",
            String::from_utf8_lossy(file)
        );
    }
    let typo = br#"{"cniVersion": "1.0.0", "name": "p", "plugins": [{"type": "bridge"}, {"type": "septa-cni", "timeoutSecond": 5}]}"#;
    let e = check_own(typo).unwrap_err();
    assert!(
        e.to_string().contains("\"timeoutSecond\"") && e.to_string().contains("timeoutSeconds"),
        "{e}"
    );
}

/// A JSON value to be written out in arbitrary but valid ways.
#[derive(Debug, Clone)]
enum J {
    Lit(&'static str),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn arb_j() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        prop::sample::select(vec![
            "null",
            "true",
            "false",
            "0",
            "-1",
            "1.5e3",
            "2E-2",
            "10.0",
            "-0",
            "123456789012345678901234567890",
        ])
        .prop_map(J::Lit),
        "[a-z \"\\\\/é\u{1F600}\u{7f}\t]{0,6}".prop_map(J::Str),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            prop::collection::vec(("[a-zA-Z\"]{1,5}", inner), 0..4).prop_map(J::Obj),
        ]
    })
}

/// Writes JSON text, taking whitespace and escaping choices from `choices` in turn.
struct Writer<'a> {
    out: String,
    choices: &'a [u8],
    at: usize,
}

const WS: [&str; 9] = [
    "", " ", "\n", "\r\n", "\t", "\n    ", "\r\n\t\t", "  ", "\n\n  ",
];

impl Writer<'_> {
    fn next(&mut self) -> u8 {
        let c = self
            .choices
            .get(self.at % self.choices.len().max(1))
            .copied();
        self.at += 1;
        c.unwrap_or(0)
    }
    fn ws(&mut self) {
        let w = WS[self.next() as usize % WS.len()];
        self.out.push_str(w);
    }
    fn string(&mut self, s: &str) {
        self.out.push('"');
        for ch in s.chars() {
            let how = self.next() % 4;
            match ch {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                c if (c as u32) < 0x20 => self.out.push_str(&format!("\\u{:04x}", c as u32)),
                '/' if how == 0 => self.out.push_str("\\/"),
                c if how == 1 => {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        self.out.push_str(&format!("\\u{u:04X}"));
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
    fn value(&mut self, j: &J) {
        match j {
            J::Lit(l) => self.out.push_str(l),
            J::Str(s) => self.string(s),
            J::Arr(a) => {
                self.out.push('[');
                self.ws();
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                        self.ws();
                    }
                    self.value(x);
                    self.ws();
                }
                self.out.push(']');
            }
            J::Obj(m) => {
                let mut seen = std::collections::BTreeSet::new();
                let members: Vec<_> = m.iter().filter(|(k, _)| seen.insert(k.clone())).collect();
                self.object(members.iter().map(|(k, v)| (k.as_str(), v)));
            }
        }
    }
    fn object<'j>(&mut self, members: impl Iterator<Item = (&'j str, &'j J)>) {
        self.out.push('{');
        self.ws();
        for (i, (k, v)) in members.enumerate() {
            if i > 0 {
                self.out.push(',');
                self.ws();
            }
            self.string(k);
            self.ws();
            self.out.push(':');
            self.ws();
            self.value(v);
            self.ws();
        }
        self.out.push('}');
    }
}

/// A conflist: top-level keys in any order with extra ones, plugins with `type` anywhere.
fn arb_conflist() -> impl Strategy<Value = String> {
    let plugin = (
        "[a-z][a-z-]{0,8}",
        prop::collection::vec(("x[a-z]{0,4}", arb_j()), 0..4),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(ty, mut rest, at)| {
            let i = at.index(rest.len() + 1);
            // Prefixed so that no primary plugin is septa-cni.
            rest.insert(i, ("type".into(), J::Str(format!("p{ty}"))));
            J::Obj(rest)
        });
    (
        prop::collection::vec(plugin, 1..5),
        prop::sample::select(vec!["0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
        prop::collection::vec(("x[a-z]{0,4}", arb_j()), 0..3),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 1..64),
        prop::sample::select(vec!["", "\n", "\r\n", "\n\n", " "]),
    )
        .prop_map(|(plugins, version, extra, order, choices, trailing)| {
            let mut top: Vec<(String, J)> = extra;
            top.dedup_by(|a, b| a.0 == b.0);
            let n = top.len();
            top.insert(order.index(n + 1), ("plugins".into(), J::Arr(plugins)));
            top.insert(
                order.index(n + 2),
                ("cniVersion".into(), J::Str(version.into())),
            );
            top.push(("name".into(), J::Str("net".into())));
            let mut w = Writer {
                out: String::new(),
                choices: &choices,
                at: 0,
            };
            w.ws();
            let mut seen = std::collections::BTreeSet::new();
            let members: Vec<_> = top.iter().filter(|(k, _)| seen.insert(k.clone())).collect();
            w.object(members.iter().map(|(k, v)| (k.as_str(), v)));
            w.out.push_str(trailing);
            w.out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn unsplice_inverts_splice_for_any_formatting(p in arb_conflist()) {
        let e = septa("/run/septa/septa.sock");
        assert_splice_contract(p.as_bytes(), &e, &p);
        let out = written(splice(p.as_bytes(), &e).unwrap());
        let e2 = septa("/run/other.sock");
        let out2 = written(splice(&out, &e2).unwrap());
        prop_assert_eq!(unsplice(&out2).unwrap().unwrap(), p.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..256)) {
        let e = septa("/run/septa/septa.sock");
        let _ = (splice(&b, &e), unsplice(&b), check_own(&b), contains_septa(&b));
    }
}
