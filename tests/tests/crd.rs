//! The CRDs the Helm chart installs are the ones the Rust types generate: a field added to
//! `api` without `crdgen` (or a hand edit of the YAML) fails here.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/septa/crds");
    let generated = api::crd::all();
    for (file, yaml) in &generated {
        let path = dir.join(file);
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            &committed == yaml,
            "{} differs from what the types generate: run `cargo run -p api --features kube --bin crdgen -- charts/septa/crds`",
            path.display()
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut want: Vec<String> = generated.iter().map(|(f, _)| f.to_string()).collect();
    want.sort();
    assert_eq!(on_disk, want, "a CRD file no type generates");
}

#[test]
fn crds_name_the_group_scope_and_status() {
    for (file, yaml) in api::crd::all() {
        let crd: serde_json::Value = crd_value(&yaml);
        assert_eq!(crd["spec"]["group"], "septa.dev", "{file}");
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1", "{file}");
        assert!(
            v["subresources"]["status"].is_object(),
            "{file}: status subresource"
        );
        assert_eq!(crd["spec"]["names"]["categories"][0], "septa", "{file}");
        assert!(crd["spec"]["names"]["shortNames"][0].is_string(), "{file}");
    }
    let scope = |f: &str| {
        let (_, y) = api::crd::all().into_iter().find(|(n, _)| n == &f).unwrap();
        crd_value(&y)["spec"]["scope"].clone()
    };
    assert_eq!(scope("fqdnpolicies.septa.dev.yaml"), "Namespaced");
    assert_eq!(scope("threatfeeds.septa.dev.yaml"), "Cluster");
}

fn crd_value(s: &str) -> serde_json::Value {
    api::crd::parse(s)
}
