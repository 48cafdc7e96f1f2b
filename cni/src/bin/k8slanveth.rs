//! CNI plugin `k8slanveth`: binds a k8slan pod spoke (the veth the agent prepared) to a pod.
//! CNI plugins take no flags: the runtime passes `CNI_*` variables and JSON on stdin.

fn main() -> std::process::ExitCode {
    k8slan_cni::main_for(k8slan_cni::PluginKind::Veth)
}
