//! `septa-cni`: chained CNI plugin. Invoked by a container runtime per the CNI spec
//! (CNI_COMMAND and friends in the environment, the network configuration on stdin); with
//! `--version` or `--help` it prints and exits without reading stdin.

use std::io::Read;

use cni::{
    invocation::{self, Invocation},
    plugin::{run, Env},
};

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    match invocation::parse(&args) {
        Invocation::Cni => {}
        Invocation::Version => {
            println!("{}", invocation::version());
            return;
        }
        Invocation::Help => {
            println!("{}", invocation::help());
            return;
        }
        Invocation::Usage(u) => {
            eprintln!("{u}");
            std::process::exit(2);
        }
    }
    let env = Env::from_process();
    let mut stdin = Vec::new();
    // VERSION may come with an empty stdin; reading nothing is fine.
    let _ = std::io::stdin().take(16 << 20).read_to_end(&mut stdin);
    match run(&env, &stdin) {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err((e, version)) => {
            println!("{}", e.to_json(&version));
            std::process::exit(1);
        }
    }
}
