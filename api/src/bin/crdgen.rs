//! `crdgen [DIR]`: the CustomResourceDefinitions of septa's kinds, as the Helm chart installs
//! them. With DIR, one file per kind is written there; without, all are printed to stdout.

use std::{io::Write, path::PathBuf};

fn main() {
    let dir = std::env::args_os().nth(1).map(PathBuf::from);
    for (file, yaml) in api::crd::all() {
        match &dir {
            Some(d) => {
                if let Err(e) = std::fs::write(d.join(file), yaml) {
                    eprintln!("crdgen: {}: {e}", d.join(file).display());
                    std::process::exit(1);
                }
            }
            None => {
                let mut out = std::io::stdout().lock();
                if out.write_all(format!("---\n{yaml}").as_bytes()).is_err() {
                    std::process::exit(1);
                }
            }
        }
    }
}
