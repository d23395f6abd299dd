//! What `septa recommend` writes is what the agent accepts: every proposed FqdnPolicy passes
//! the agent's own validation of the typed spec, and every proposed object loads without an
//! error or a warning in the policy engine. A field `recommend` writes that the agent does not
//! know (or spells differently) fails here, not on a cluster.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    args: cli::recommend::cli::RecommendArgs,
}

fn data(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../cli/tests/data/recommend")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn proposed_fqdn_policies_pass_the_agents_validation() {
    let cmd = Cmd::try_parse_from([
        "recommend",
        "--stable-after",
        "6h",
        "--manifests",
        &data("shop"),
        "--flows",
        &data("shop-flows.jsonl"),
        "--external",
        "fqdn",
    ])
    .unwrap();
    let outcome = cli::recommend::run(&cmd.args.request().unwrap()).unwrap();
    let fqdns: Vec<&serde_json::Value> = outcome
        .proposals
        .iter()
        .filter_map(|p| p.fqdn.as_ref())
        .collect();
    assert!(!fqdns.is_empty(), "the shop flows name an external API");
    for f in &fqdns {
        let spec = agent::dns::spec::from_manifest(f)
            .unwrap_or_else(|(field, why)| panic!("the agent refuses {field}: {why}\n{f:#}"));
        assert!(!spec.rules.is_empty());
    }

    let yaml = cli::recommend::yaml(&outcome.proposals).unwrap();
    let dir = std::env::temp_dir().join(format!("septa-contract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("proposal.yaml"), &yaml).unwrap();
    let (_, diags) = policies::load::load_paths(std::slice::from_ref(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        diags.is_empty() && diags.warnings().is_empty(),
        "the proposal does not load cleanly: {diags:?}"
    );
}
