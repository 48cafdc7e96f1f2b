//! `k8slan-agent`: the node agent. Subcommands: `datapath` (debug CLI for the node datapath,
//! needs no cluster); `run` (device plugin and reconcilers) lands with the device plugin work.

mod datapath_cli;
mod manifest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "k8slan-agent", version, about = "k8slan node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive the node datapath by hand (LAN namespaces, bridges, VXLANs, spokes); no cluster needed.
    Datapath(datapath_cli::DatapathArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Datapath(args) => datapath_cli::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("k8slan-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn attach_needs_a_known_kind() {
        let err = Cli::try_parse_from([
            "k8slan-agent",
            "datapath",
            "attach",
            "--lan",
            "f.yaml",
            "--node",
            "n1",
            "--spoke",
            "srl",
            "--kind",
            "tap",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--kind") && err.contains("tap"), "{err}");
        let err = Cli::try_parse_from(["k8slan-agent", "datapath", "up", "--lan", "f.yaml"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--node"), "{err}");
    }

    #[test]
    fn dirs_default_to_the_api_defaults() {
        let cli = Cli::try_parse_from(["k8slan-agent", "datapath", "show"]).unwrap();
        let Command::Datapath(args) = cli.command;
        // Unless the environment overrides them.
        if std::env::var_os("K8SLAN_NETNS_DIR").is_none() {
            assert_eq!(
                args.dirs.netns_dir.to_str(),
                Some(k8slan_api::naming::DEFAULT_NETNS_DIR)
            );
        }
        if std::env::var_os("K8SLAN_DEV_DIR").is_none() {
            assert_eq!(
                args.dirs.dev_dir.to_str(),
                Some(k8slan_api::naming::DEFAULT_DEV_DIR)
            );
        }
    }
}
