//! Privileged tests of the netns directory's defences: the agent only touches namespaces it
//! created. Symlinks, bind mounts of foreign namespaces (or of another LAN's under a wrong name),
//! regular files and entries planted before the agent creates a LAN are reported
//! (`Kernel::foreign_namespace_entries`) and left exactly as they were, even when orphan removal
//! is asked for them by name; the container runtime's directory is refused as `--netns-dir`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use k8slan_api::SpokeKind;
use k8slan_netagent::{HostNs, Kernel, RtnlKernel};
use k8slan_testkit::{TestNs, unique_name};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netns_dir(n: &Node) -> PathBuf {
    n.dir.path().join("netns")
}

/// The kernel must report `name` as foreign (saying `what`), `show` must not list it (so the
/// agent never calls it an orphan), and orphan removal by name must change nothing.
fn assert_reported_and_untouched(n: &Node, name: &str, what: &str) {
    let foreign = n.dp.kernel().foreign_namespace_entries().unwrap();
    let entry = foreign
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} not reported: {foreign:?}"));
    assert!(entry.what.contains(what), "{name}: {entry:?}");
    assert!(!n.dp.show().unwrap().iter().any(|l| l.ns == name));
    let removed = n.dp.remove_orphan(name).unwrap_or_default();
    assert!(
        removed.is_empty(),
        "{name}: orphan removal removed {removed:?}"
    );
}

#[test]
#[ignore = "privileged"]
fn a_symlink_to_the_nodes_namespace_is_reported_and_untouched() {
    let (_ul, n) = one_node();
    // The node's links, which a teardown "inside" the symlinked namespace would delete.
    n.sh("ip link add keep0 type veth peer name keep1");
    let init = netns_dir(&n).join("init");
    let host = netns_dir(&n).join("host");
    std::os::unix::fs::symlink("/proc/1/ns/net", &init).unwrap();
    std::os::unix::fs::symlink(n.ns.path(), &host).unwrap();
    for name in ["init", "host"] {
        assert_reported_and_untouched(&n, name, "symlink");
    }
    assert_eq!(
        std::fs::read_link(&init).unwrap(),
        Path::new("/proc/1/ns/net")
    );
    assert_eq!(std::fs::read_link(&host).unwrap(), n.ns.path());
    assert!(n.sh("ip -o link").contains("keep0"));
}

#[test]
#[ignore = "privileged"]
fn a_bind_mounted_foreign_namespace_is_reported_and_untouched() {
    let (_ul, n) = one_node();
    let foreign = TestNs::new("frn").unwrap();
    // Links that look like k8slan's (its link group and an alias): still not ours to delete.
    foreign
        .sh("ip link add br0 type bridge && ip link set br0 group 0x6b386c6e alias k8slan:x/port/y")
        .unwrap();
    let entry = netns_dir(&n).join("planted");
    std::fs::write(&entry, "").unwrap();
    sh(&format!(
        "mount --bind {} {}",
        foreign.path().display(),
        entry.display()
    ));
    assert_reported_and_untouched(&n, "planted", "did not create");
    assert!(
        n.dir.mounts().contains(&entry),
        "unmounted: {:?}",
        n.dir.mounts()
    );
    assert!(foreign.sh("ip -o link").unwrap().contains("br0"));
    // The node's own namespace bind-mounted there is foreign too.
    let node_entry = netns_dir(&n).join("nodebind");
    std::fs::write(&node_entry, "").unwrap();
    sh(&format!(
        "mount --bind {} {}",
        n.ns.path().display(),
        node_entry.display()
    ));
    assert_reported_and_untouched(&n, "nodebind", "the node's own");
    assert!(n.dir.mounts().contains(&node_entry));
}

#[test]
#[ignore = "privileged"]
fn another_lans_namespace_under_a_wrong_name_is_reported_and_untouched() {
    let (_ul, n) = one_node();
    let a = spoke("a");
    let spec = lan_spec(781, &[&a]);
    n.spoke_up(&spec, &a, SpokeKind::Veth);
    let copy = netns_dir(&n).join("copy");
    std::fs::write(&copy, "").unwrap();
    sh(&format!(
        "mount --bind {} {}",
        netns_dir(&n).join(&spec.ns).display(),
        copy.display()
    ));
    assert_reported_and_untouched(&n, "copy", "another name");
    // The real LAN is unharmed and still k8slan's.
    assert!(n.dp.show().unwrap().iter().any(|l| l.ns == spec.ns));
    assert!(n.lan_sh(&spec.ns, "ip -o link").contains(&format!(" {a}@")));
    n.dp.lan_down(&spec).unwrap();
    assert!(n.dir.mounts().contains(&copy));
}

#[test]
#[ignore = "privileged"]
fn regular_files_fifos_and_directories_are_reported_and_untouched() {
    let (_ul, n) = one_node();
    let dir = netns_dir(&n);
    std::fs::write(dir.join("file"), "precious").unwrap();
    nix::unistd::mkfifo(
        &dir.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    assert_reported_and_untouched(&n, "file", "a regular file");
    assert_reported_and_untouched(&n, "fifo", "a FIFO");
    assert_reported_and_untouched(&n, "sub", "a directory");
    assert_eq!(
        std::fs::read_to_string(dir.join("file")).unwrap(),
        "precious"
    );
    assert!(dir.join("fifo").exists() && dir.join("sub").is_dir());
}

#[test]
#[ignore = "privileged"]
fn an_entry_planted_before_the_lan_is_created_is_not_mounted_over_or_followed() {
    let (_ul, n) = one_node();
    let elsewhere = n.dir.path().join("elsewhere");
    // A symlink where the LAN's namespace is about to go, pointing at a file of the attacker's
    // choice (absent) and one at the node's namespace.
    for (i, target) in [elsewhere.clone(), PathBuf::from("/proc/1/ns/net")]
        .into_iter()
        .enumerate()
    {
        let s = spoke("p");
        let spec = lan_spec(790 + i as u32, &[&s]);
        let entry = netns_dir(&n).join(&spec.ns);
        std::os::unix::fs::symlink(&target, &entry).unwrap();
        let err = n.dp.lan_up(&spec, &n.name).unwrap_err().to_string();
        assert!(err.contains(&entry.display().to_string()), "{err}");
        assert!(err.contains("did not create"), "{err}");
        assert_eq!(std::fs::read_link(&entry).unwrap(), target);
        assert!(!n.dir.mounts().contains(&entry));
        assert_reported_and_untouched(&n, &spec.ns, "symlink");
    }
    assert!(!elsewhere.exists(), "the symlink was followed");
    // A regular file of someone else's in the LAN's place.
    let s = spoke("p");
    let spec = lan_spec(792, &[&s]);
    let entry = netns_dir(&n).join(&spec.ns);
    std::fs::write(&entry, "mine").unwrap();
    assert!(n.dp.lan_up(&spec, &n.name).is_err());
    assert_eq!(std::fs::read_to_string(&entry).unwrap(), "mine");
    assert!(!n.dir.mounts().contains(&entry));
}

#[test]
#[ignore = "privileged"]
fn a_leftover_mount_point_of_k8slans_is_replaced() {
    let (_ul, n) = one_node();
    let s = spoke("p");
    let spec = lan_spec(793, &[&s]);
    // What a crash between creating the mount point and mounting leaves: empty, 0400, root's.
    let entry = netns_dir(&n).join(&spec.ns);
    std::fs::write(&entry, "").unwrap();
    sh(&format!("chmod 0400 {}", entry.display()));
    n.dp.lan_up(&spec, &n.name).unwrap();
    assert!(n.dir.mounts().contains(&entry));
    assert!(n.lan_sh(&spec.ns, "ip -o link").contains("br0"));
    n.dp.lan_down(&spec).unwrap();
    assert!(!entry.exists());
}

#[test]
#[ignore = "privileged"]
fn lan_namespaces_carry_the_k8slan_mark_on_lo() {
    let (_ul, n) = one_node();
    let s = spoke("p");
    let spec = lan_spec(794, &[&s]);
    n.dp.lan_up(&spec, &n.name).unwrap();
    let lo = n.lan_sh(&spec.ns, "ip -d link show lo");
    assert!(
        lo.contains(&format!("alias k8slan:{}/netns", spec.ns)),
        "{lo}"
    );
    n.dp.lan_down(&spec).unwrap();
}

#[test]
#[ignore = "privileged"]
fn the_container_runtimes_netns_directory_is_refused() {
    std::fs::create_dir_all("/run/netns").unwrap();
    let link = std::env::temp_dir().join(unique_name("rtl"));
    std::os::unix::fs::symlink("/run/netns", &link).unwrap();
    let bind = k8slan_testkit::TestDir::new("rtb").unwrap();
    sh(&format!(
        "mount --bind /run/netns {}",
        bind.path().display()
    ));
    for dir in [
        PathBuf::from("/run/netns"),
        PathBuf::from("/var/run/netns"),
        PathBuf::from("/run/k8slan/../netns"),
        link.clone(),
        bind.path().to_path_buf(),
    ] {
        let e = RtnlKernel::new(HostNs::Current, &dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--netns-dir"), "{}: {e}", dir.display());
        assert!(e.contains("container runtime"), "{}: {e}", dir.display());
    }
    std::fs::remove_file(&link).unwrap();
}
