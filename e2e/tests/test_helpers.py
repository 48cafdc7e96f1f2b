"""The helpers' own promises, checked without a cluster: settings come from e2e/lib/common.sh,
the product constants agree with api/src/naming.rs and the chart, and the test LAN subnets
are distinct and collide with no range of the cluster (e2e/README.md, "Address plan")."""
import ipaddress
import re

import pytest

import helpers
from helpers import E2E_DIR, SubnetPlan, lan_subnet, setting

REPO = E2E_DIR.parent
CLUSTER_RANGES = ("MGMT_NODE_CIDR", "UNDERLAY_V4_CIDR", "CLUSTER_CIDR", "SERVICE_CIDR")


def test_settings_are_those_of_common_sh():
    """Whether passed in by run_pytest or read by hand, the values are common.sh's."""
    shell = helpers._common_sh_settings()
    assert helpers.NODES == shell["NODES"].split() and helpers.WORKERS == shell["WORKERS"].split()
    for name in ("KUBERNETES_VERSION", "TESTBOX_IMAGE", "PY_VENV", "SERVICE_CIDR", "KUBERNETES_SERVICE_IP",
                 "UNDERLAY_IF", "K8SLAN_NAMESPACE", "TEST_LAN_RANGE"):
        assert setting(name) == shell[name], name
    with pytest.raises(KeyError, match="NO_SUCH_SETTING"):
        setting("NO_SUCH_SETTING")


def test_product_constants_match_the_api_and_the_chart():
    naming = (REPO / "api" / "src" / "naming.rs").read_text()
    rust = dict(re.findall(r'pub const (\w+): &str = "([^"]*)";', naming))
    assert rust["RESOURCE_DOMAIN"] == helpers.RESOURCE_DOMAIN
    assert rust["DEFAULT_NETNS_DIR"] == helpers.LAN_NETNS_DIR
    assert rust["DEFAULT_DEV_DIR"] == helpers.LAN_DEV_DIR
    assert rust["LINK_ALIAS_PREFIX"] == helpers.LINK_ALIAS_PREFIX
    assert rust["SPOKE_GATE"] == helpers.SPOKE_GATE
    values = (REPO / "charts" / "k8slan" / "values.yaml").read_text()
    chart = dict(re.findall(r"^  (kubeletDir|netnsDir|devDir): (\S+)$", values, re.M))
    assert chart == {"kubeletDir": helpers.KUBELET_DIR, "netnsDir": helpers.LAN_NETNS_DIR,
                     "devDir": helpers.LAN_DEV_DIR}, chart


def test_lan_subnets_are_distinct_24s_of_the_test_range():
    lan_range = ipaddress.ip_network(setting("TEST_LAN_RANGE"))
    drawn = [lan_subnet() for _ in range(3)]
    assert len({s.network for s in drawn}) == 3
    for subnet in drawn:
        assert subnet.network.prefixlen == 24 and subnet.network.subnet_of(lan_range), subnet
        for name in CLUSTER_RANGES:
            assert not subnet.network.overlaps(ipaddress.ip_network(setting(name))), (subnet, name)
    first = drawn[0]
    base = first.network.network_address
    assert first.host(1) == str(base + 1) and first.cidr(9) == f"{base + 9}/24"
    assert first.host(9) in first and str(drawn[1].network.network_address + 1) not in first
    for bad in (0, 255):
        with pytest.raises(ValueError, match=str(first)):
            first.host(bad)


def test_subnet_plan_refuses_a_range_that_collides_or_strays():
    supernet = setting("TEST_SUPERNET")
    taken = {name: setting(name) for name in CLUSTER_RANGES}
    with pytest.raises(ValueError, match="CLUSTER_CIDR"):
        SubnetPlan(setting("CLUSTER_CIDR"), supernet, taken)
    with pytest.raises(ValueError, match="not inside TEST_SUPERNET"):
        SubnetPlan("203.0.113.0/24", supernet, taken)
    plan = SubnetPlan("198.18.254.0/23", supernet, taken)
    assert [str(plan.next()), str(plan.next())] == ["198.18.254.0/24", "198.18.255.0/24"]
    with pytest.raises(AssertionError, match="used up"):
        plan.next()


def test_readme_address_plan_lists_every_range():
    readme = (E2E_DIR / "README.md").read_text()
    plan = readme.split("## Address plan", 1)[1].split("\n## ", 1)[0]
    for name in ("TEST_SUPERNET", "TEST_LAN_RANGE", *CLUSTER_RANGES):
        assert f"`{setting(name)}`" in plan, f"{name} {setting(name)} is missing from the README's address plan"
