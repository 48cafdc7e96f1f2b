"""LAN resources without members: NADs and node capacity (scenario 2), admission of duplicates
and bad LANs (scenario 7), printer columns, and a hand-made NAD that k8slan leaves alone."""
import json
import time

from helpers import (CONTROL_PLANE, WORKERS, Lan, apply_fails, describe_node_count,
                     kubelet_registration_time, lan_condition, lan_manifest, nad_exists, nad_name,
                     node_resources, resource_name, unique_tag, unique_vni, wait_for)

CAPACITY_GOAL_S = 2.0     # the goal; printed, see test docstring
CAPACITY_BOUND_S = 30.0   # what the test asserts (kubelet status updates are periodic)


def test_lan_gets_nads_and_capacity_on_every_worker(k8slan, namespace):
    """kubectl apply of a LAN in the seed's form: both NADs per spoke, and every worker's
    `kubectl describe node` shows both resources of every spoke with capacity 1.

    The time from apply to the last resource in every worker's node status is printed; the
    issue's goal is 2 s. The bound asserted is looser (timing goals are figures, not timed
    tests): after the agent registers (well under a second), the resource reaches the node
    status at the kubelet's next status sync (nodeStatusUpdateFrequency: 1 s in the e2e
    kubelets, 10 s by default)."""
    kubectl = k8slan
    lan = Lan(roles=("srl", "vm"))
    wanted = [resource_name(kind, s) for s in lan.spokes.values() for kind in ("veth", "mac")]
    start, wall_start = time.monotonic(), time.time()
    kubectl.apply(lan.manifest(), namespace)

    seen = {}

    def all_advertised():
        for node in WORKERS:
            if node in seen:
                continue
            cap, alloc = node_resources(kubectl, node)
            if all(cap.get(r) == "1" and alloc.get(r) == "1" for r in wanted):
                seen[node] = time.monotonic() - start
        return len(seen) == len(WORKERS)

    wait_for(all_advertised, CAPACITY_BOUND_S, interval=0.1, what=f"capacity of {wanted} on {WORKERS}")
    elapsed = max(seen.values())
    print(f"\nFIGURE capacity: LAN applied -> {len(wanted)} resources in node status of every worker: "
          f"{elapsed:.2f}s (per node: {', '.join(f'{n} {t:.2f}s' for n, t in sorted(seen.items()))}; "
          f"goal {CAPACITY_GOAL_S}s{'' if elapsed <= CAPACITY_GOAL_S else ' NOT MET'})")
    # Where the time goes: the agent registering with the kubelet, then the kubelet's status update.
    for node in WORKERS:
        stamps = [kubelet_registration_time(node, r, wall_start) for r in wanted]
        if all(stamps):
            print(f"FIGURE capacity {node}: all {len(wanted)} device plugins registered with the kubelet "
                  f"{max(stamps) - wall_start:.2f}s after apply; in the node status {seen[node]:.2f}s after")
    for node in WORKERS:
        for r in wanted:
            assert describe_node_count(kubectl, node, r) == 1, f"describe node {node}: {r}"
    # The control plane has no underlay port (UNDERLAY): it advertises nothing usable.
    cap, alloc = node_resources(kubectl, CONTROL_PLANE)
    assert all(alloc.get(r, "0") == "0" for r in wanted), alloc

    for spoke in lan.spokes.values():
        for kind, cni_type in (("veth", "k8slanveth"), ("mac", "k8slanmacvtap")):
            nad = kubectl.json("-n", namespace, "get", "network-attachment-definitions", nad_name(kind, spoke))
            ann = nad["metadata"]["annotations"]
            assert ann["k8s.v1.cni.cncf.io/resourceName"] == resource_name(kind, spoke)
            config = json.loads(nad["spec"]["config"])
            assert config["type"] == cni_type, config
            owners = nad["metadata"].get("ownerReferences", [])
            assert [o["name"] for o in owners if o["kind"] == "LAN"] == [lan.name]

    # Printer columns: NAME VNI MODE SPOKES READY-NODES ACCEPTED AGE (-o wide adds FAMILY).
    wait_for(lambda: (lan_condition(kubectl, namespace, lan.name, "Accepted") or {}).get("status") == "True",
             30, what="LAN Accepted=True")
    out = kubectl("-n", namespace, "get", "lan", lan.name)
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "VNI", "MODE", "SPOKES", "READY-NODES", "ACCEPTED", "AGE"], header
    cols = row.split()
    assert cols[:3] == [lan.name, str(lan.vni), "multicast"] and cols[3] == "2" and cols[5] == "True", row
    wide = kubectl("-n", namespace, "get", "lan", lan.name, "-o", "wide").splitlines()
    assert wide[0].split()[:4] == ["NAME", "VNI", "MODE", "FAMILY"] and wide[1].split()[3] == "ipv6", wide
    # The short name works too.
    assert lan.name in kubectl("-n", namespace, "get", "vlan")


def test_duplicate_vni_ns_or_spoke_is_rejected_naming_both_lans(k8slan, namespace):
    kubectl = k8slan
    first = Lan(roles=("x",))
    kubectl.apply(first.manifest(), namespace)
    first_ref = f"{namespace}/{first.name}"
    cases = {
        "vni": lambda dup: lan_manifest(dup.name, dup.ns, first.vni, list(dup.spokes.values())),
        "ns": lambda dup: lan_manifest(dup.name, first.ns, dup.vni, list(dup.spokes.values())),
        "spoke": lambda dup: lan_manifest(dup.name, dup.ns, dup.vni, [first.spokes["x"]]),
    }
    for field, make in cases.items():
        dup = Lan(roles=("y",))
        err = apply_fails(kubectl, namespace, make(dup))
        print(f"\n{field}: {err.strip()}")
        assert f"{namespace}/{dup.name}" in err, f"{field}: message does not name the new LAN: {err}"
        assert first_ref in err, f"{field}: message does not name {first_ref}: {err}"
        assert f"spec.{'spokes' if field == 'spoke' else field}" in err, err


def test_bad_lans_are_rejected_by_the_api(k8slan, namespace):
    kubectl = k8slan
    tag = unique_tag()

    def lan(**overrides):
        spec = {"ns": f"e2e-{tag}", "vni": unique_vni(), "spokes": [f"s{tag}"], **overrides}
        return lan_manifest(f"bad-{tag}", spec.pop("ns"), spec.pop("vni"), spec.pop("spokes"), **spec)

    cases = {
        "ns traversal ../": (lan(ns="../../etc"), "ns"),
        "ns with a slash": (lan(ns="a/b"), "ns"),
        "ns ..": (lan(ns=".."), "ns"),
        "16-byte spoke": (lan(spokes=["s" * 16]), "spokes"),
        "16-byte bridge": (lan(bridge="b" * 16), "bridge"),
        "16-byte vxlan": (lan(vxlan="v" * 16), "vxlan"),
        "vni 0": (lan(vni=0), "vni"),
        "vni 2^24": (lan(vni=16_777_216), "vni"),
        "spoke named like the bridge": (lan(spokes=["br0"]), "spokes"),
        "uppercase spoke": (lan(spokes=["Srl"]), "spokes"),
    }
    for what, (manifest, field) in cases.items():
        err = apply_fails(kubectl, namespace, manifest)
        assert field in err, f"{what}: the error does not name {field}: {err}"


def test_hand_made_nad_with_a_generated_name_is_left_alone(k8slan, namespace):
    kubectl = k8slan
    lan = Lan(roles=("p",))
    spoke = lan.spokes["p"]
    mine = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": nad_name("veth", spoke), "labels": {"made-by": "hand"}},
            "spec": {"config": json.dumps({"cniVersion": "0.4.0", "name": "mine", "type": "bridge",
                                           "bridge": "handmade0"})}}
    kubectl.apply(mine, namespace)
    before = kubectl.json("-n", namespace, "get", "network-attachment-definitions", nad_name("veth", spoke))
    kubectl.apply(lan.manifest(), namespace)

    def nad_conflict():
        c = lan_condition(kubectl, namespace, lan.name, "Ready")
        return c if c and c["status"] == "False" and c["reason"] == "NadConflict" else None
    cond = wait_for(nad_conflict, 30, what="LAN Ready=False reason NadConflict")
    assert nad_name("veth", spoke) in cond["message"], cond
    # The twin k8slan owns is created; the hand-made one is unchanged.
    wait_for(lambda: nad_exists(kubectl, namespace, nad_name("mac", spoke)), 30, what="the mac NAD")
    after = kubectl.json("-n", namespace, "get", "network-attachment-definitions", nad_name("veth", spoke))
    assert after["spec"] == before["spec"]
    assert after["metadata"]["labels"] == {"made-by": "hand"}
    assert not after["metadata"].get("ownerReferences")
    # Deleting the LAN leaves it too.
    kubectl("-n", namespace, "delete", "lan", lan.name, "--wait=true")
    wait_for(lambda: not nad_exists(kubectl, namespace, nad_name("mac", spoke)),
             30, what="the mac NAD to go with the LAN")
    assert kubectl.json("-n", namespace, "get", "network-attachment-definitions",
                        nad_name("veth", spoke))["spec"] == before["spec"]
