//! The README's main command end to end: the demo runs, every verdict agrees with connlist,
//! the live change moves cells, and egress by name and the threat feed do what step 4 says.

#[test]
fn demo_runs_and_agrees_with_connlist() {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_septa-demo"));
    let agent = exe.parent().unwrap().join("septa-agent");
    assert!(
        agent.exists(),
        "{} missing: the workspace build makes it (cargo test --workspace)",
        agent.display()
    );
    let out = std::process::Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("every cell agrees with `septa connlist"),
        "{stdout}"
    );
    assert!(
        stdout.contains("every cell agrees with connlist on the new policies"),
        "{stdout}"
    );
    assert!(stdout.contains("3 cells changed"), "{stdout}");
    assert!(
        stdout.contains("rule=shop/"),
        "flow records name their rules:\n{stdout}"
    );
    assert!(
        stdout.contains("every egress verdict as expected"),
        "{stdout}"
    );
    assert!(
        stdout.contains("shop/payments-partner-api dns=api.partner.example"),
        "the FQDN-allowed connection names the policy and the name:\n{stdout}"
    );
    assert!(
        stdout.contains("198.51.100.66:443  threat-feed feed=demo-bad-hosts")
            && stdout.contains("-> default/outsider-1:8080  threat-feed feed=demo-bad-hosts"),
        "feed drops in both directions name the feed:\n{stdout}"
    );
    assert!(
        !std::path::Path::new("/run/septa-demo").exists(),
        "the demo removes its feed file"
    );
}
