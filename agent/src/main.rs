//! `k8slan-agent`: the node agent. Subcommands: `run` (the DaemonSet's agent: device plugin,
//! datapath and LAN reconciler), `install-cni` (the init container's copy of the CNI plugins)
//! and `datapath` (debug CLI for the node datapath, needs no cluster).

mod datapath_cli;
mod install_cni;
mod lans;
mod manifest;
mod metrics;
mod peers;
mod preparer;
mod run;
mod underlay;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "k8slan-agent", version, about = "k8slan node agent")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `k8slan_netagent=debug`).
    #[arg(long, global = true, env = "K8SLAN_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format on stderr.
    #[arg(long, global = true, env = "K8SLAN_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent: device plugin, datapath and LAN reconciler.
    Run(Box<run::RunArgs>),
    /// Copy the CNI plugins into the host's CNI binary directory (atomic rename).
    InstallCni(install_cni::InstallCniArgs),
    /// Drive the node datapath by hand (LAN namespaces, bridges, VXLANs, spokes); no cluster needed.
    Datapath(datapath_cli::DatapathArgs),
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|e| {
        eprintln!("k8slan-agent: log level {level:?} is not a valid filter ({e}); using info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format);
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(k8slan_deviceplugin::RUNTIME_WORKERS)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run::run(*args))),
        Command::InstallCni(args) => install_cni::run(args),
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
        let Command::Datapath(args) = cli.command else {
            panic!("parsed {:?} as something else", cli.command);
        };
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
