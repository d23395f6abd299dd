//! `septa-agent`: see `septa-agent --help`.

use agent::{
    config::{Config, ConfigError},
    daemon::Agent,
    run::run,
};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEPTA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match Config::load(std::env::args_os()) {
        Ok(c) => c,
        Err(ConfigError::Usage(e)) => e.exit(),
        Err(ConfigError::Invalid(e)) => {
            eprintln!("septa-agent: {e}");
            std::process::exit(2);
        }
    };
    if cfg.check_config {
        // The own conflist is part of the configuration: read and checked as the start would.
        if let Err(e) = agent::cniconf::CniConf::new(&cfg) {
            eprintln!("septa-agent: {e}");
            std::process::exit(2);
        }
        println!("septa-agent: the configuration is valid\n{cfg:#?}");
        return;
    }
    if cfg.prepare_node {
        match agent::prepare::prepare_node(&cfg) {
            Ok(lines) => lines.iter().for_each(|l| println!("septa-agent: {l}")),
            Err(e) => {
                eprintln!("septa-agent: --prepare-node: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if cfg.cni_uninstall {
        let removed = agent::cniconf::CniConf::new(&cfg).and_then(|mut c| c.uninstall());
        match removed {
            Ok(files) if files.is_empty() => println!("septa-agent: no CNI entry of septa found"),
            Ok(files) => files
                .iter()
                .for_each(|f| println!("septa-agent: septa's entry removed from {}", f.display())),
            Err(e) => {
                eprintln!("septa-agent: --cni-uninstall: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    // Enter the namespace before any thread exists, so every thread is in it.
    if let Some(ns) = &cfg.netns {
        let f = match std::fs::File::open(ns) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("septa-agent: --netns {}: {e}", ns.display());
                std::process::exit(2);
            }
        };
        if let Err(e) = hostnet::netns::enter(&f) {
            eprintln!("septa-agent: --netns {}: {e}", ns.display());
            std::process::exit(2);
        }
    }
    // Pinned links and connections each hold a descriptor; the default soft limit is small.
    if let Some(n) = agent::health::raise_nofile_limit() {
        tracing::debug!(limit = n, "open files limit");
    }
    // Before anything is loaded: a flow log or collector the agent cannot use is a usage error.
    let exporters = match agent::flows::Exporters::from_config(&cfg) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("septa-agent: {e}");
            std::process::exit(2);
        }
    };
    // Before anything records a metric: a value set before the recorder exists is lost.
    let prometheus = agent::metrics::install();
    let agent = match Agent::start(cfg) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, kind = e.metric_label(), "cannot start");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(agent, prometheus, exporters)) {
        tracing::error!(error = %e, "agent failed");
        std::process::exit(1);
    }
}
