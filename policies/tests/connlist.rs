//! connlist's external ranges: both address families, split only where the connections
//! differ.

use policies::{
    connlist::{connlist, diff},
    load::load_str,
};

const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c, image: i}]}\n---\n";

fn lines(text: &str) -> Vec<String> {
    let (c, d) = load_str("t.yaml", text);
    assert!(d.is_empty(), "{d}");
    connlist(&c, &Default::default())
        .iter()
        .map(|l| format!("{} => {} : {}", l.src, l.dst, l.conns))
        .collect()
}

/// An IPv6 ipBlock is a range of its own; the rest of each family is one range.
#[test]
fn ipv6_ranges_are_listed() {
    let l = lines(&format!("{PODS}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: '2001:db8::/32'}}}}], ports: [{{port: 443}}]}}]\n"));
    assert_eq!(
        l,
        [
            "x/a[Pod] => 2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff[External] : TCP 443",
            "0.0.0.0-255.255.255.255[External] => x/a[Pod] : All Connections",
            "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff[External] => x/a[Pod] : All Connections",
        ]
    );
}

/// Ranges an ipBlock splits off are joined again where the connections are the same.
#[test]
fn adjacent_ranges_with_the_same_connections_are_merged() {
    let l = lines(&format!("{PODS}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}}}]\n  - to: [{{ipBlock: {{cidr: 10.1.0.0/16}}}}]\n    ports: [{{port: 53, protocol: UDP}}]\n"));
    let egress: Vec<&String> = l.iter().filter(|s| s.starts_with("x/a[Pod]")).collect();
    assert_eq!(
        egress,
        [
            "x/a[Pod] => 0.0.0.0-9.255.255.255[External] : All Connections",
            "x/a[Pod] => 10.1.0.0-10.1.255.255[External] : UDP 53",
            "x/a[Pod] => 11.0.0.0-255.255.255.255[External] : All Connections",
        ]
    );
    assert!(
        l.contains(&"0.0.0.0-255.255.255.255[External] => x/a[Pod] : All Connections".to_owned()),
        "ingress is not split by egress blocks: {l:?}"
    );
}

/// A diff splits both sides the same way, then joins adjacent ranges that changed alike.
#[test]
fn diff_joins_ranges_that_changed_alike() {
    let (old, _) = load_str("old.yaml", PODS);
    let (new, _) = load_str("new.yaml", &format!("{PODS}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8}}}}]}}]\n"));
    let d = diff(&old, &new);
    let removed: Vec<String> = d
        .iter()
        .filter(|c| c.kind() == "removed")
        .map(|c| c.dst.to_string())
        .collect();
    assert_eq!(
        removed,
        [
            "0.0.0.0-9.255.255.255[External]",
            "11.0.0.0-255.255.255.255[External]",
            "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff[External]",
        ]
    );
}
