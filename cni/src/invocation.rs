//! What the command line asks for. A container runtime runs the plugin without arguments (the
//! CNI protocol is the environment and stdin); people and image tests run it with a flag.

use std::ffi::OsString;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// No arguments: a CNI command from the environment and stdin.
    Cni,
    /// `--version`: print [`version`] and exit 0 without reading stdin.
    Version,
    /// `--help` or `-h`: print [`help`] and exit 0.
    Help,
    /// Anything else: this text on stderr, exit 2.
    Usage(String),
}

/// The one line `--version` prints.
pub fn version() -> String {
    format!("septa-cni {}", env!("CARGO_PKG_VERSION"))
}

/// What `--help` prints.
pub fn help() -> String {
    format!(
        "\
septa-cni: a chained CNI plugin. It runs after the plugin that makes the pod's veth (bridge,
ptp, flannel, Calico, ...), registers the endpoint with the septa agent over the agent's
root-only socket, waits until the pod is enforced, and passes prevResult through. It holds no
API credentials. A container runtime runs it with CNI_COMMAND and friends in the environment
and the network configuration on stdin; it takes no arguments then.

Configuration keys, besides the CNI spec's (unknown keys are an error):
  agentSocket        the agent's socket (default {})
  socketWaitSeconds  how long ADD and CHECK wait for the socket to accept connections
                     (default 30, at most 300); then they fail with code 11, try again later
  timeoutSeconds     how long to wait for the agent's answer (default 10, 1 to 300)

DEL always succeeds. Runtime capability septa.dev/labels, args.cni.labels or
CNI_ARGS SEPTA_LABELS=k:v,k2:v2 give the pod's labels.

Usage: septa-cni [--version | --help]",
        api::protocol::DEFAULT_SOCKET
    )
}

/// Read the arguments after the program name.
pub fn parse(args: &[OsString]) -> Invocation {
    match args {
        [] => Invocation::Cni,
        [one] if one == "--version" => Invocation::Version,
        [one] if one == "--help" || one == "-h" => Invocation::Help,
        _ => Invocation::Usage(format!(
            "septa-cni: unexpected arguments {:?}\nusage: septa-cni [--version | --help] \
             (a container runtime runs it without arguments)",
            args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn flags_and_everything_else() {
        assert_eq!(parse(&[]), Invocation::Cni);
        assert_eq!(parse(&args(&["--version"])), Invocation::Version);
        assert_eq!(parse(&args(&["--help"])), Invocation::Help);
        assert_eq!(parse(&args(&["-h"])), Invocation::Help);
        for bad in [
            &["--version", "x"][..],
            &["-v"],
            &["ADD"],
            &[""],
            &["--VERSION"],
        ] {
            let Invocation::Usage(u) = parse(&args(bad)) else {
                panic!("{bad:?}")
            };
            assert!(u.contains("usage: septa-cni"), "{u}");
        }
        let Invocation::Usage(u) = parse(&[OsString::from_vec(vec![0xff, b'x'])]) else {
            panic!()
        };
        assert!(
            u.contains("\u{fffd}x"),
            "non-UTF-8 is shown, not a panic: {u}"
        );
        assert_eq!(
            version(),
            format!("septa-cni {}", env!("CARGO_PKG_VERSION"))
        );
        for key in [
            api::protocol::DEFAULT_SOCKET,
            "agentSocket",
            "socketWaitSeconds",
            "timeoutSeconds",
            "chained",
        ] {
            assert!(help().contains(key), "{key}");
        }
    }
}
