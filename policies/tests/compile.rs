//! Compiler properties: stable numbering, small diffs for small changes, hostNetwork pods.

use policies::{
    compile::{Compiler, StateDiff},
    eval::{evaluate, Endpoint},
    load::load_paths,
    model::Protocol,
};

fn shop() -> policies::Cluster {
    let (c, d) = load_paths(&[concat!(env!("CARGO_MANIFEST_DIR"), "/examples/shop")]);
    assert!(d.is_empty(), "{d}");
    c
}

#[test]
fn one_label_change_is_a_small_diff() {
    let mut c = shop();
    let mut compiler = Compiler::default();
    let before = compiler.compile(&c);
    assert!(
        before.policy.len() >= 5,
        "the example compiles to real entries: {}",
        before.policy.len()
    );
    // Recompiling the same input changes nothing.
    assert!(StateDiff::between(&before, &compiler.compile(&c)).is_empty());

    // The db loses its app label: its identity changes; nothing about the others does.
    let db = c.pods.iter_mut().find(|p| p.name == "db").unwrap();
    db.labels.insert("app".into(), "db-v2".into());
    let after = compiler.compile(&c);
    let diff = StateDiff::between(&before, &after);
    assert_eq!(
        diff.endpoints.upsert.len(),
        1,
        "only the db endpoint changes: {:?}",
        diff.endpoints
    );
    // Every policy entry that changed involves the db's old or new identity, as subject or peer.
    let (old_db, new_db) = (
        before.endpoints["shop/db"].identity,
        after.endpoints["shop/db"].identity,
    );
    assert_ne!(old_db, new_db);
    let touches = |k: &dataplane_common::PolicyKey| {
        [old_db, new_db].contains(&k.subject) || [old_db, new_db].contains(&k.peer)
    };
    assert!(!diff.policy.is_empty());
    assert!(
        diff.policy.upsert.iter().all(|(k, _)| touches(k)),
        "{:?}",
        diff.policy
    );
    assert!(diff.policy.remove.iter().all(touches), "{:?}", diff.policy);
    let ids_kept = before
        .endpoints
        .iter()
        .filter(|(k, _)| !k.ends_with("/db"))
        .all(|(k, v)| after.endpoints[k].identity == v.identity);
    assert!(ids_kept, "other endpoints keep their identity numbers");
    // And the api can no longer reach it.
    let api = c.pods.iter().find(|p| p.name == "api").unwrap();
    let db = c.pods.iter().find(|p| p.name == "db").unwrap();
    assert!(!evaluate(
        &c,
        Endpoint::Pod(api),
        Endpoint::Pod(db),
        Protocol::Tcp,
        5432,
        false
    )
    .allowed());
}

#[test]
fn numbering_does_not_depend_on_input_order() {
    let c = shop();
    let mut reversed = c.clone();
    reversed.pods.reverse();
    reversed.policies.reverse();
    let (a, b) = (
        Compiler::default().compile(&c),
        Compiler::default().compile(&reversed),
    );
    assert_eq!(a.policy, b.policy);
    assert_eq!(a.identities, b.identities);
}

#[test]
fn host_network_pods_are_not_endpoints() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: node-exporter, namespace: mon, labels: {app: exporter}}
spec: {hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 192.168.1.10}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: mon}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;
    let (c, d) = policies::load::load_str("hn.yaml", yaml);
    assert!(d.is_empty(), "{d}");
    let st = Compiler::default().compile(&c);
    assert!(
        st.endpoints.is_empty(),
        "a hostNetwork pod has no veth and no endpoint entry"
    );
    assert!(
        st.ipcache.is_empty(),
        "its address is the node's, not a pod identity"
    );
    // Policies selecting it do not apply: it is the node.
    let ev = evaluate(
        &c,
        Endpoint::Pod(&c.pods[0]),
        Endpoint::External("203.0.113.1".parse().unwrap()),
        Protocol::Tcp,
        443,
        false,
    );
    assert!(ev.allowed() && ev.egress.is_none());
}
