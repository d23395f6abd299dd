//! The README's table of `septa-agent` options is the command's own: every flag, its group,
//! default and help, in `--help` order. Regenerate after changing an option with
//! `SEPTA_BLESS=1 cargo test -p agent --test readme_options`.

use std::path::PathBuf;

use agent::config::Config;
use clap::CommandFactory;

const BEGIN: &str =
    "<!-- septa-agent options: generated from the command by agent/tests/readme_options.rs -->\n";
const END: &str = "<!-- end of septa-agent options -->\n";

/// The table, from the command's arguments.
fn table() -> String {
    let cmd = Config::command();
    let mut out = String::from("| group | flag | default | meaning |\n|---|---|---|---|\n");
    for a in cmd.get_arguments() {
        let Some(long) = a.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let flag = match (a.get_action().takes_values(), a.get_value_names()) {
            (true, Some(v)) => format!("`--{long} {}`", v[0]),
            _ => format!("`--{long}`"),
        };
        let help = a
            .get_long_help()
            .or(a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        // An option whose default depends on the node says it in its help: `[default: ...]`.
        let (meaning, stated) = match help.split_once(" [default: ") {
            Some((m, d)) => (m.to_owned(), Some(d.trim_end_matches(']').to_owned())),
            None => (help.clone(), None),
        };
        let default = match a.get_default_values() {
            [] if !a.get_action().takes_values() => "off".into(),
            [] => stated.unwrap_or_else(|| "none".into()),
            v => v
                .iter()
                .map(|d| format!("`{}`", d.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let group = a.get_help_heading().unwrap_or("General");
        out.push_str(&format!(
            "| {group} | {flag} | {} | {} |\n",
            default.replace('|', "\\|"),
            meaning.replace('\n', " ").replace('|', "\\|")
        ));
    }
    out
}

#[test]
fn readme_lists_every_option_as_the_command_declares_it() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md has no {BEGIN:?} ... {END:?} section");
    };
    let current = &readme[b + BEGIN.len()..e];
    let want = table();
    if std::env::var_os("SEPTA_BLESS").is_some() {
        let updated = format!("{}{BEGIN}{want}{}", &readme[..b], &readme[e..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(
        current == want,
        "the README's option table differs from septa-agent's options (SEPTA_BLESS=1 to rewrite):\n{want}"
    );
}

#[test]
fn every_option_has_help_and_a_group() {
    for a in Config::command().get_arguments() {
        let Some(long) = a.get_long() else { continue };
        if matches!(long, "help" | "version" | "config") {
            continue;
        }
        assert!(a.get_help().is_some(), "--{long} has no help");
        assert!(a.get_help_heading().is_some(), "--{long} is in no group");
    }
}
