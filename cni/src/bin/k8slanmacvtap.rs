//! CNI plugin `k8slanmacvtap`: binds a k8slan VM spoke (the macvtap the agent prepared) to a
//! KubeVirt virt-launcher pod. Its own name, so that it never clashes with KubeVirt's
//! macvtap-cni (`macvtap`). CNI plugins take no flags: the runtime passes `CNI_*` variables and
//! JSON on stdin.

fn main() -> std::process::ExitCode {
    k8slan_cni::main_for(k8slan_cni::PluginKind::Macvtap)
}
