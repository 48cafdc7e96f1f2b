//! Privileged tests of the real datapath: simulated nodes (network namespaces acting as node
//! host namespaces) on a shared L2 underlay with link-local IPv6 only, pods as namespaces.
//! Run as root: `cargo test -p k8slan-netagent -- --ignored`.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use k8slan_api::SpokeKind;
use k8slan_api::naming::macvtap_name;
use k8slan_netagent::{Kernel, LinkKind, NodeLan};
use k8slan_testkit::TestNs;
use k8slan_testkit::frame::{
    ETHERTYPE_LLDP, Filter, Frame, LLDP_DST, Mac, PacketSocket, TapDevice,
};

/// Send `frame` from `iface` in `from` and return what `iface_to` in `to` receives.
fn frame_across(from: &TestNs, to: &TestNs, frame: &Frame) -> Option<Frame> {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            to.run(|| {
                let sock = PacketSocket::open("e1").unwrap();
                ready_tx.send(()).unwrap();
                let filter = Filter {
                    ethertype: Some(frame.ethertype),
                    src: Some(frame.src),
                };
                sock.recv(&filter, Duration::from_secs(3)).unwrap()
            })
            .unwrap()
        });
        ready_rx.recv().unwrap();
        from.run(|| {
            let sock = PacketSocket::open("e1").unwrap();
            for _ in 0..3 {
                sock.send(frame).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .unwrap();
        rx.join().unwrap()
    })
}

fn ifindexes(views: &[NodeLan]) -> Vec<(String, u32)> {
    let mut v = Vec::new();
    for view in views {
        for l in view.bridges.iter().chain(&view.vxlans) {
            v.push((l.name.clone(), l.ifindex));
        }
        for s in &view.spokes {
            for l in [&s.port, &s.host_end, &s.macvtap].into_iter().flatten() {
                v.push((format!("{}:{}", s.spoke, l.name), l.ifindex));
            }
        }
    }
    v
}

#[test]
#[ignore = "privileged"]
fn pods_on_two_nodes_talk_over_the_lan() {
    let (_ul, n1, n2) = two_nodes();
    let (a, b) = (spoke("a"), spoke("b"));
    let spec = lan_spec(4242, &[&a, &b]);

    let s1 = n1.spoke_up(&spec, &a, SpokeKind::Veth);
    n2.spoke_up(&spec, &b, SpokeKind::Veth);
    assert_eq!(s1.host_ifname, a);
    assert_eq!(s1.mtu, 1430);
    assert!(s1.mac.is_none());
    // Bridge, vxlan and both veth ends carry the LAN MTU.
    let lan_links = n1.lan_sh(&spec.ns, "ip -o link");
    for name in ["br0", "vx0", a.as_str()] {
        let line = lan_links
            .lines()
            .find(|l| l.contains(&format!(" {name}")))
            .unwrap();
        assert!(line.contains("mtu 1430"), "{line}");
    }
    assert!(n1.sh(&format!("ip -o link show {a}")).contains("mtu 1430"));
    // The LAN namespace is a silent wire: no link in it speaks IPv6 onto the LAN.
    for name in ["br0", "vx0", a.as_str()] {
        let off = n1.lan_sh(
            &spec.ns,
            &format!("cat /proc/sys/net/ipv6/conf/{name}/disable_ipv6"),
        );
        assert_eq!(
            off.trim(),
            "1",
            "IPv6 is on for {name} in the LAN namespace"
        );
    }

    let p1 = pod_with(&n1, &a, "198.18.7.1/24");
    let p2 = pod_with(&n2, &b, "198.18.7.2/24");
    assert!(ping(&p1, "198.18.7.2"), "ping over the LAN failed");
    // Full-size frames pass unfragmented (DF set): 1430 - 28 bytes of IPv4 and ICMP headers.
    assert!(
        ping(&p2, "-M do -s 1402 198.18.7.1"),
        "full-MTU ping failed"
    );
    assert!(
        !ping(&p2, "-M do -s 1403 198.18.7.1"),
        "a frame over the LAN MTU must not pass"
    );

    // Link-local control frames cross the LAN: LLDP, STP and LACP.
    let me: Mac = "02:6b:00:00:00:01".parse().unwrap();
    for (dst, ethertype) in [
        (LLDP_DST, ETHERTYPE_LLDP),
        ("01:80:c2:00:00:00".parse().unwrap(), 0x0027),
        ("01:80:c2:00:00:02".parse().unwrap(), 0x8809),
    ] {
        let f = Frame {
            dst,
            src: me,
            ethertype,
            payload: b"control".to_vec(),
        };
        let got = frame_across(&p1, &p2, &f);
        assert_eq!(
            got.map(|g| g.dst),
            Some(dst),
            "frame to {dst} did not cross the LAN"
        );
    }
    // Any source MAC crosses.
    let f = Frame {
        dst: "ff:ff:ff:ff:ff:ff".parse().unwrap(),
        src: "02:de:ad:be:ef:42".parse().unwrap(),
        ethertype: 0x88b5,
        payload: b"spoofed".to_vec(),
    };
    let got = frame_across(&p2, &p1, &f).expect("frame with an arbitrary source MAC was dropped");
    assert_eq!(got.payload_text(), "spoofed");

    n1.dp.lan_down(&spec).unwrap();
    n2.dp.lan_down(&spec).unwrap();
}

#[test]
#[ignore = "privileged"]
fn vm_tap_device_reaches_a_remote_pod_and_gets_the_reply() {
    let (_ul, n1, n2) = two_nodes();
    let (vm, b) = (spoke("vm"), spoke("b"));
    let spec = lan_spec(777, &[&vm, &b]);
    let att = n1.spoke_up(&spec, &vm, SpokeKind::Mac);
    n2.spoke_up(&spec, &b, SpokeKind::Veth);
    let mac = att.mac.clone().unwrap();
    assert!(mac.tap_host_path.starts_with(n1.dir.path()));
    // Owned by the configured user (KubeVirt's qemu, 107:107), 0660: a non-root QEMU opens it.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&mac.tap_host_path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (107, 107, 0o660)
    );
    assert_eq!(
        mac.tap_container_path,
        format!("/dev/tap{}", mac.macvtap_ifindex)
    );
    // The device node's numbers are those sysfs shows inside the node.
    let sys = n1.sh(&format!(
        "cat /sys/class/net/{}/macvtap/tap{}/dev",
        mac.macvtap, mac.macvtap_ifindex
    ));
    assert_eq!(sys.trim(), mac.devnum);

    // The macvtap moves into the VM's pod, as the CNI plugin does; the node stays usable.
    let vm_pod = TestNs::new("vmp").unwrap();
    n1.sh(&format!(
        "ip link set {} netns {}",
        mac.macvtap,
        vm_pod.name()
    ));
    vm_pod
        .sh(&format!("ip link set {} up", mac.macvtap))
        .unwrap();
    // Entering the pod's namespace gave the tap the lowest free minor number, which may differ
    // (other tests free macvtaps meanwhile): the CNI plugin re-points the node; so does this.
    let in_pod = vm_pod
        .sh(&format!(
            "cat /sys/class/net/{}/macvtap/tap*/dev",
            mac.macvtap
        ))
        .unwrap();
    let (ma, mi) = in_pod.trim().split_once(':').unwrap();
    n1.dp
        .kernel()
        .make_tap_node(
            &mac.tap_host_path,
            k8slan_netagent::kernel::TapNode {
                dev: k8slan_netagent::kernel::DevNum {
                    major: ma.parse().unwrap(),
                    minor: mi.parse().unwrap(),
                },
                owner: k8slan_netagent::kernel::NodeOwner::QEMU,
            },
        )
        .unwrap();
    let remote = pod_with(&n2, &b, "198.18.8.2/24");
    let remote_mac: Mac = remote
        .sh("cat /sys/class/net/e1/address")
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let vm_mac: Mac = "02:76:6d:00:00:01".parse().unwrap();
    let mut tap = TapDevice::open(&mac.tap_host_path).unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let reply = std::thread::scope(|s| {
        let responder = s.spawn(|| {
            remote
                .run(|| {
                    let sock = PacketSocket::open("e1").unwrap();
                    ready_tx.send(()).unwrap();
                    let filter = Filter {
                        ethertype: Some(0x88b5),
                        src: Some(vm_mac),
                    };
                    let got = sock.recv(&filter, Duration::from_secs(3)).unwrap()?;
                    sock.send(&got.echo(Some(remote_mac))).unwrap();
                    Some(got)
                })
                .unwrap()
        });
        ready_rx.recv().unwrap();
        tap.send(&Frame {
            dst: "ff:ff:ff:ff:ff:ff".parse().unwrap(),
            src: vm_mac,
            ethertype: 0x88b5,
            payload: b"from-vm".to_vec(),
        })
        .unwrap();
        let got = responder.join().unwrap();
        assert_eq!(
            got.map(|f| f.payload_text()),
            Some("from-vm".into()),
            "the remote pod got nothing"
        );
        tap.recv(
            &Filter {
                ethertype: Some(0x88b5),
                src: Some(remote_mac),
            },
            Duration::from_secs(3),
        )
        .unwrap()
    });
    let reply = reply.expect("no reply came back through the tap");
    assert_eq!(reply.dst, vm_mac);
    assert_eq!(reply.payload_text(), "echo:from-vm");

    drop(tap);
    n1.dp.lan_down(&spec).unwrap();
    n2.dp.lan_down(&spec).unwrap();
    assert!(!mac.tap_host_path.exists());
}

#[test]
#[ignore = "privileged"]
fn the_node_never_speaks_onto_the_lan() {
    let (_ul, n1, n2) = two_nodes();
    let (vm, waiting, b) = (spoke("vm"), spoke("w"), spoke("b"));
    let spec = lan_spec(778, &[&vm, &waiting, &b]);
    n2.spoke_up(&spec, &b, SpokeKind::Veth);
    // The listening pod speaks no IPv6 itself, so any IPv6 frame it sees comes from elsewhere.
    let pod = pod_with(&n2, &b, "198.18.9.2/24");
    pod.sh("sysctl -qw net.ipv6.conf.e1.disable_ipv6=1")
        .unwrap();

    let (ready_tx, ready_rx) = mpsc::channel();
    let heard = std::thread::scope(|s| {
        let listener = s.spawn(|| {
            pod.run(|| {
                let sock = PacketSocket::open("e1").unwrap();
                ready_tx.send(()).unwrap();
                let ipv6 = Filter {
                    ethertype: Some(0x86dd),
                    src: None,
                };
                // Long enough for MLD reports and router solicitations of a fresh IPv6 link.
                sock.recv(&ipv6, Duration::from_secs(4)).unwrap()
            })
            .unwrap()
        });
        ready_rx.recv().unwrap();
        // Node 1 prepares a VM spoke (host end and macvtap up in its host namespace) and a pod
        // spoke whose host end waits there for its pod.
        n1.spoke_up(&spec, &vm, SpokeKind::Mac);
        n1.spoke_up(&spec, &waiting, SpokeKind::Veth);
        listener.join().unwrap()
    });
    assert_eq!(heard, None, "a frame of the node reached the LAN");
    for name in [vm.clone(), macvtap_name(&vm), waiting.clone()] {
        let off = n1.sh(&format!("cat /proc/sys/net/ipv6/conf/{name}/disable_ipv6"));
        assert_eq!(
            off.trim(),
            "1",
            "IPv6 is on for {name} in the host namespace"
        );
    }
    n1.dp.lan_down(&spec).unwrap();
    n2.dp.lan_down(&spec).unwrap();
}

#[test]
#[ignore = "privileged"]
fn a_lan_namespace_replaced_behind_the_agents_back_is_left_alone_and_reported() {
    let (_ul, n1) = one_node();
    let a = spoke("a");
    let spec = lan_spec(779, &[&a]);
    n1.spoke_up(&spec, &a, SpokeKind::Veth);
    // Someone removes the LAN namespace and mounts a fresh namespace of their own at the same
    // path (the datapath keeps a netlink socket per namespace: it must not go on talking to the
    // old one, and it must not adopt the new one, which k8slan did not create).
    let path = n1.dir.path().join("netns").join(&spec.ns);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umount -l {p} && rm {p} && touch {p} && unshare --net={p} true",
            p = path.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let err = n1.dp.lan_up(&spec, &n1.name).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("did not create"),
        "{err}"
    );
    let foreign = n1.dp.kernel().foreign_namespace_entries().unwrap();
    assert!(foreign.iter().any(|f| f.name == spec.ns), "{foreign:?}");
    assert!(!n1.dp.show().unwrap().iter().any(|l| l.ns == spec.ns));
    n1.dp.lan_down(&spec).unwrap();
    // Still mounted, and nothing was made in it.
    assert!(n1.dir.mounts().contains(&path), "{:?}", n1.dir.mounts());
    assert!(!n1.lan_sh(&spec.ns, "ip -o link").contains("br0"));
}

#[test]
#[ignore = "privileged"]
fn two_lans_with_different_vnis_are_isolated() {
    let (_ul, n1, n2) = two_nodes();
    let (a1, a2, b2) = (spoke("a"), spoke("a"), spoke("b"));
    let lan_a = lan_spec(100, &[&a1, &a2]);
    let lan_b = lan_spec(200, &[&b2]);
    n1.spoke_up(&lan_a, &a1, SpokeKind::Veth);
    n2.spoke_up(&lan_a, &a2, SpokeKind::Veth);
    n2.spoke_up(&lan_b, &b2, SpokeKind::Veth);
    let pa1 = pod_with(&n1, &a1, "198.18.9.1/24");
    let _pa2 = pod_with(&n2, &a2, "198.18.9.2/24");
    let _pb2 = pod_with(&n2, &b2, "198.18.9.3/24");
    assert!(ping(&pa1, "198.18.9.2"), "same LAN must connect");
    assert!(
        !ping(&pa1, "198.18.9.3"),
        "a pod on another VNI must be unreachable"
    );
    for (n, s) in [(&n1, &lan_a), (&n2, &lan_a), (&n2, &lan_b)] {
        n.dp.lan_down(s).unwrap();
    }
}

#[test]
#[ignore = "privileged"]
fn second_up_is_a_no_op_and_drift_is_repaired() {
    let (_ul, n1, n2) = two_nodes();
    let (a, b, c, vm) = (spoke("a"), spoke("b"), spoke("c"), spoke("vm"));
    let spec = lan_spec(31337, &[&a, &b, &c, &vm]);
    n1.spoke_up(&spec, &a, SpokeKind::Veth);
    n1.spoke_up(&spec, &c, SpokeKind::Veth);
    n1.spoke_up(&spec, &vm, SpokeKind::Mac);
    n2.spoke_up(&spec, &b, SpokeKind::Veth);
    let p1 = pod_with(&n1, &a, "198.18.10.1/24");
    let _p2 = pod_with(&n2, &b, "198.18.10.2/24");
    assert!(ping(&p1, "198.18.10.2"));

    // Second run: nothing changes, not even ifindexes.
    let before = n1.dp.show().unwrap();
    let st = n1.dp.lan_up(&spec, &n1.name).unwrap();
    assert!(st.changes.is_empty(), "{:?}", st.changes);
    for (s, k) in [(&c, SpokeKind::Veth), (&vm, SpokeKind::Mac)] {
        let att = n1.dp.spoke_up(&spec, &n1.name, s, k).unwrap();
        assert!(att.changes.is_empty(), "{:?}", att.changes);
    }
    assert_eq!(ifindexes(&n1.dp.show().unwrap()), ifindexes(&before));

    // Drift 1: the vxlan replaced by hand with one on the wrong UDP port.
    let lan_path = n1.dir.path().join("netns").join(&spec.ns);
    n1.lan_sh(&spec.ns, "ip link del vx0");
    n1.sh(&format!(
        "ip link add vx0 type vxlan id 31337 dev {UNDERLAY} group ff02::14 dstport 8472 && \
         ip link set vx0 netns {}",
        lan_path.display()
    ));
    assert!(!ping(&p1, "198.18.10.2"), "the drift should break the LAN");
    // Drift 2: a held spoke's port taken off the bridge.
    n1.lan_sh(&spec.ns, &format!("ip link set {a} nomaster"));
    // Drift 3: an unheld spoke's port deleted by hand (its host end dies with it).
    n1.lan_sh(&spec.ns, &format!("ip link del {c}"));
    let held_port = n1.lan_sh(&spec.ns, &format!("ip -o link show {a} | cut -d: -f1"));

    let st = n1.dp.lan_up(&spec, &n1.name).unwrap();
    assert!(
        st.changes.iter().any(|c| c.contains("replace vx0")),
        "{:?}",
        st.changes
    );
    assert!(
        st.changes
            .iter()
            .any(|ch| ch.contains(&format!("port {a}"))),
        "{:?}",
        st.changes
    );
    assert!(ping(&p1, "198.18.10.2"), "LAN not repaired");
    assert_eq!(
        n1.lan_sh(&spec.ns, &format!("ip -o link show {a} | cut -d: -f1")),
        held_port
    );
    let att = n1.spoke_up(&spec, &c, SpokeKind::Veth);
    assert!(
        att.changes.iter().any(|ch| ch.contains("create veth pair")),
        "{:?}",
        att.changes
    );
    // The VM spoke was not touched by any of it.
    let vm_after: Vec<_> = ifindexes(&n1.dp.show().unwrap())
        .into_iter()
        .filter(|(n, _)| n.starts_with(&vm))
        .collect();
    let vm_before: Vec<_> = ifindexes(&before)
        .into_iter()
        .filter(|(n, _)| n.starts_with(&vm))
        .collect();
    assert_eq!(vm_after, vm_before);
    let vx = n1.dp.show().unwrap()[0].vxlans[0].clone();
    assert!(matches!(vx.kind, LinkKind::Vxlan(p) if p.port == 4789));

    n1.dp.lan_down(&spec).unwrap();
    n2.dp.lan_down(&spec).unwrap();
}

#[test]
#[ignore = "privileged"]
fn down_leaves_nothing_behind() {
    let (_ul, n1) = one_node();
    let (a, vm) = (spoke("a"), spoke("vm"));
    let spec = lan_spec(55, &[&a, &vm]);
    let other = lan_spec(56, &[&spoke("o")]);
    n1.spoke_up(&spec, &a, SpokeKind::Veth);
    n1.spoke_up(&spec, &vm, SpokeKind::Mac);
    n1.dp
        .spoke_up(&other, &n1.name, &other.spokes[0], SpokeKind::Mac)
        .unwrap();
    let netns_dir = n1.dir.path().join("netns");
    let dev_dir = n1.dir.path().join("dev");

    let removed = n1.dp.lan_down(&spec).unwrap();
    assert!(!removed.is_empty());
    let ns_files: Vec<String> = std::fs::read_dir(&netns_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(ns_files, vec![other.ns.clone()]);
    let mounts = n1.dir.mounts();
    assert!(mounts.iter().all(|m| !m.ends_with(&spec.ns)), "{mounts:?}");
    let devs: Vec<String> = std::fs::read_dir(&dev_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(devs, vec![format!("tap-{}", other.spokes[0])]);
    let host_links = n1.sh("ip -o link | awk -F': ' '{print $2}' | cut -d@ -f1");
    let mut names: Vec<&str> = host_links.lines().collect();
    names.sort();
    let mut want = vec!["lo", UNDERLAY, other.spokes[0].as_str()];
    let other_mvt = k8slan_api::naming::macvtap_name(&other.spokes[0]);
    want.push(&other_mvt);
    want.sort();
    assert_eq!(names, want);

    n1.dp.lan_down(&other).unwrap();
    assert_eq!(std::fs::read_dir(&netns_dir).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&dev_dir).unwrap().count(), 0);
    // Only the netns directory's own shared bind mount stays.
    assert_eq!(n1.dir.mounts(), vec![netns_dir.clone()]);
    assert!(Path::new(&netns_dir).exists());
}

#[test]
#[ignore = "privileged"]
fn an_orphan_lan_is_listed_by_show_and_removed_alone() {
    let (_ul, n1) = one_node();
    let (a, o) = (spoke("a"), spoke("o"));
    let known = lan_spec(60, &[&a]);
    let gone = lan_spec(61, &[&o]);
    n1.spoke_up(&known, &a, SpokeKind::Veth);
    n1.spoke_up(&gone, &o, SpokeKind::Mac);
    // What the agent's reconciler plans from after a restart: both namespaces, with spokes.
    let mut listed: Vec<String> = n1.dp.show().unwrap().into_iter().map(|v| v.ns).collect();
    listed.sort();
    let mut want = vec![known.ns.clone(), gone.ns.clone()];
    want.sort();
    assert_eq!(listed, want);
    let known_view = |views: Vec<NodeLan>| -> Vec<NodeLan> {
        views.into_iter().filter(|v| v.ns == known.ns).collect()
    };
    let before = ifindexes(&known_view(n1.dp.show().unwrap()));
    n1.dp.remove_orphan(&gone.ns).unwrap();
    let views = n1.dp.show().unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].ns, known.ns);
    for name in [o.clone(), macvtap_name(&o)] {
        assert!(
            !n1.sh("ip -o link").contains(&format!(" {name}")),
            "{name} survived"
        );
    }
    assert!(!n1.dir.path().join("dev").join(format!("tap-{o}")).exists());
    // The known LAN is untouched: same links, same ifindexes.
    assert_eq!(ifindexes(&views), before);
}
