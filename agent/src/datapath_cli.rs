//! `k8slan-agent datapath ...`: the node datapath by hand, with the same library calls the
//! device plugin makes. Results are JSON on stdout; logs go to stderr.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use k8slan_api::SpokeKind;
use k8slan_api::naming::{DEFAULT_DEV_DIR, DEFAULT_NETNS_DIR};
use k8slan_netagent::kernel::NodeOwner;
use k8slan_netagent::{Datapath, HostNs, RtnlKernel};
use serde::Serialize;

use crate::manifest;

#[derive(Debug, Args)]
pub struct DatapathArgs {
    #[command(flatten)]
    pub dirs: Dirs,
    #[command(subcommand)]
    pub op: Op,
}

/// Where the datapath keeps its namespaces and device nodes.
#[derive(Debug, Args)]
pub struct Dirs {
    /// Directory of LAN namespace mounts.
    #[arg(long, global = true, env = "K8SLAN_NETNS_DIR", default_value = DEFAULT_NETNS_DIR)]
    pub netns_dir: PathBuf,
    /// Node-private directory of VM spokes' tap device nodes.
    #[arg(long, global = true, env = "K8SLAN_DEV_DIR", default_value = DEFAULT_DEV_DIR)]
    pub dev_dir: PathBuf,
    /// Network namespace to treat as the node's host namespace (default: the agent's own).
    #[arg(long, global = true, env = "K8SLAN_HOST_NETNS")]
    pub host_netns: Option<PathBuf>,
    /// Owner (`UID:GID`, numeric) of the VM spokes' tap device nodes: the container gets the
    /// node with this owner, and KubeVirt's QEMU runs as 107:107 (non-root VMs).
    #[arg(
        long,
        global = true,
        env = "K8SLAN_TAP_OWNER",
        default_value = "107:107"
    )]
    pub tap_owner: NodeOwner,
}

#[derive(Debug, Subcommand)]
pub enum Op {
    /// Bring a LAN up on this node: namespace, bridge, VXLAN.
    Up {
        /// LAN manifest (YAML, as for kubectl apply).
        #[arg(long)]
        lan: PathBuf,
        /// Kubernetes name of this node (selects the vxlanDevMap entry).
        #[arg(long, env = "K8SLAN_NODE_NAME")]
        node: String,
    },
    /// Prepare a spoke's host side exactly as Allocate does; prints what the CNI plugin gets.
    Attach {
        #[arg(long)]
        lan: PathBuf,
        #[arg(long, env = "K8SLAN_NODE_NAME")]
        node: String,
        #[arg(long)]
        spoke: String,
        /// `veth` (a pod) or `mac` (a KubeVirt VM: macvtap and tap device).
        #[arg(long, value_parser = parse_kind)]
        kind: SpokeKind,
    },
    /// Remove one spoke.
    Detach {
        #[arg(long)]
        lan: PathBuf,
        #[arg(long)]
        spoke: String,
    },
    /// Remove everything of a LAN from this node.
    Down {
        #[arg(long)]
        lan: PathBuf,
    },
    /// Every LAN namespace on this node, its links and spokes.
    Show,
}

fn parse_kind(s: &str) -> Result<SpokeKind, String> {
    s.parse()
}

#[derive(Serialize)]
struct Removed<'a> {
    lan: &'a str,
    removed: Vec<String>,
}

fn print(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("encode JSON")?;
    writeln!(std::io::stdout().lock(), "{text}").context("write the result to stdout")
}

pub fn run(args: DatapathArgs) -> Result<()> {
    // Parse and validate the manifest before touching the kernel.
    let spec = match &args.op {
        Op::Up { lan, .. } | Op::Attach { lan, .. } | Op::Detach { lan, .. } | Op::Down { lan } => {
            Some(manifest::load(lan)?)
        }
        Op::Show => None,
    };
    let host = match &args.dirs.host_netns {
        Some(p) => HostNs::Path(p.clone()),
        None => HostNs::Current,
    };
    let kernel = RtnlKernel::new(host, &args.dirs.netns_dir).context("open the host namespace")?;
    let dp = Datapath::new(kernel, &args.dirs.dev_dir).with_tap_owner(args.dirs.tap_owner);
    match (args.op, spec) {
        (Op::Up { node, .. }, Some(spec)) => print(&dp.lan_up(&spec, &node)?),
        (
            Op::Attach {
                node, spoke, kind, ..
            },
            Some(spec),
        ) => print(&dp.spoke_up(&spec, &node, &spoke, kind)?),
        (Op::Detach { spoke, .. }, Some(spec)) => print(&Removed {
            lan: &spec.ns,
            removed: dp.spoke_down(&spec, &spoke)?,
        }),
        (Op::Down { .. }, Some(spec)) => print(&Removed {
            lan: &spec.ns,
            removed: dp.lan_down(&spec)?,
        }),
        (Op::Show, _) => print(&dp.show()?),
        (_, None) => unreachable!("every operation but show has a manifest"),
    }
}
