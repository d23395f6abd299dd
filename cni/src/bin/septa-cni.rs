//! `septa-cni`: chained CNI plugin. Invoked by a container runtime per the CNI spec
//! (CNI_COMMAND and friends in the environment, the network configuration on stdin).

use std::io::Read;

use cni::plugin::{run, Env};

fn main() {
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
