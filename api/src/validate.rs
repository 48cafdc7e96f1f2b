//! Pure validation rules for every name and number that reaches a path, an interface or a
//! netlink call. The CRD schema mirrors these rules; the agent, the CNI plugins and the webhook
//! call them directly, so a value that passes here is safe to use as root.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::lan::{LanSpec, VxlanFamily, VxlanMode};

/// Highest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = 16_777_215;
/// Most spokes one LAN may have.
pub const MAX_SPOKES: usize = 4095;
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest LAN namespace name.
pub const MAX_NETNS_LEN: usize = 63;
/// Longest LAN name: its NetworkAttachmentDefinitions carry it as the value of the label
/// `lan.k8slan.io/lan`, and a label value has at most 63 characters.
pub const MAX_LAN_NAME_LEN: usize = 63;
/// Most namespaces `spec.allowedNamespaces` may list.
pub const MAX_ALLOWED_NAMESPACES: usize = 64;
/// Prefixes of the host-side names of VM spokes' macvtaps ([`crate::naming::macvtap_name`]):
/// no spoke and no underlay may start with them, so a spoke can never be named like another
/// spoke's macvtap (`mvt-x` against spoke `x`, in this LAN or any other).
pub const MACVTAP_PREFIXES: [&str; 2] = ["mvt-", "mvh-"];
/// Spoke names refused because they are well-known interfaces of a node (a spoke's host end is
/// created in the node's namespace under the spoke's name). A convenience that catches the
/// obvious mistakes early: the real defence is the agent, which never takes over a link it did
/// not make (see docs/security.md).
pub const RESERVED_SPOKE_NAMES: [&str; 9] = [
    "lo",
    "eth0",
    "cni0",
    "docker0",
    "cbr0",
    "tunl0",
    "kube-ipvs0",
    "kube-bridge",
    "nodelocaldns",
];

/// One rule broken by one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.spokes[2]`.
    pub field: String,
    /// The rule that was broken and how to fix it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every rule a LAN spec breaks, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidLan(pub Vec<FieldError>);

impl fmt::Display for InvalidLan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid LAN: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A Linux interface name: 1–15 bytes of printable ASCII, no `/`, `:` or whitespace, not `.`/`..`.
pub fn interface_name(field: &str, name: &str) -> Result<(), FieldError> {
    let rule = "must be an interface name of 1-15 printable ASCII characters without '/', ':' or whitespace, and not '.' or '..'";
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        return Err(FieldError::new(
            field,
            format!("{name:?} is {} bytes long; {rule}", name.len()),
        ));
    }
    if name == "." || name == ".." {
        return Err(FieldError::new(field, format!("{name:?} {rule}")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '/' || *c == ':')
    {
        return Err(FieldError::new(
            field,
            format!("{name:?} contains {c:?}; {rule}"),
        ));
    }
    Ok(())
}

/// A LAN namespace name: one path component below the netns directory, `[A-Za-z0-9][A-Za-z0-9_.-]*`,
/// at most 63 characters. It can never be `.`, `..`, empty or contain `/`.
pub fn netns_name(field: &str, name: &str) -> Result<(), FieldError> {
    let rule = "must be 1-63 characters of letters, digits, '_', '.' or '-', starting with a letter or digit (it names a file under the netns directory)";
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || name.len() > MAX_NETNS_LEN {
        return Err(FieldError::new(field, format!("{name:?} {rule}")));
    }
    Ok(())
}

/// A spoke name: a DNS label of at most 15 characters (`[a-z0-9]([a-z0-9-]*[a-z0-9])?`), so that
/// it is an interface name, part of a NetworkAttachmentDefinition name and of an extended
/// resource name at once.
pub fn spoke_name(field: &str, name: &str) -> Result<(), FieldError> {
    let rule = "must be 1-15 lowercase letters, digits or '-', starting and ending with a letter or digit (it becomes an interface name and part of the resource name macvtap.k8slan.io/k8slan-veth-<spoke>)";
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(field, format!("{name:?} {rule}")))
    }
}

/// A VXLAN network identifier, 1–16777215.
pub fn vni(field: &str, vni: u32) -> Result<(), FieldError> {
    if (1..=MAX_VNI).contains(&vni) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{vni} is out of range; a VNI must be between 1 and {MAX_VNI}"),
        ))
    }
}

/// An IPv6 multicast group such as `ff02::14`, spelled as the CRD schema allows (the first group
/// written with its four hex digits `ffXS`, then hex digits and colons only: no embedded IPv4, no
/// zone), with a scope that can leave the node: not interface-local (`ffX1`) or reserved (`ffX0`,
/// `ffXF`). Upper- and lower-case hex are the same address.
pub fn multicast_group(field: &str, group: &str) -> Result<IpAddr, FieldError> {
    if group.contains('.') && !group.contains(':') {
        return ipv4_multicast_group(field, group).map(IpAddr::V4);
    }
    ipv6_multicast_group(field, group).map(IpAddr::V6)
}

/// An IPv6 multicast group whose scope reaches other nodes, spelled as the CRD pattern accepts.
fn ipv6_multicast_group(field: &str, group: &str) -> Result<Ipv6Addr, FieldError> {
    let example = "use a multicast group such as ff02::14 (IPv6, link-local scope), ff05::100 (IPv6, site-local) or 239.1.20.20 (IPv4)";
    let bad = |why: &str| {
        Err(FieldError::new(
            field,
            format!("{group:?} {why}; {example}"),
        ))
    };
    let addr = match group.parse::<Ipv6Addr>() {
        Ok(a) => a,
        Err(_) => return bad("is not an IPv6 or IPv4 address"),
    };
    if !addr.is_multicast() {
        return bad("is not a multicast address");
    }
    if !group_spelling_ok(group) {
        return bad(
            "must be written in plain hex with the first group in full (ffXS:...), without an embedded IPv4 address or a zone",
        );
    }
    match addr.segments()[0] & 0xf {
        0x1 => bad("has interface-local scope (ffX1), which never leaves the node"),
        0x0 | 0xf => bad("has a reserved scope (ffX0 or ffXF)"),
        _ => Ok(addr),
    }
}

/// An IPv4 multicast group (224.0.0.0/4) in dotted decimal.
fn ipv4_multicast_group(field: &str, group: &str) -> Result<Ipv4Addr, FieldError> {
    let bad = |why: &str| {
        Err(FieldError::new(
            field,
            format!("{group:?} {why}; use an IPv4 multicast group such as 239.1.20.20"),
        ))
    };
    match group.parse::<Ipv4Addr>() {
        Err(_) => bad("is not an IPv4 address in dotted decimal"),
        Ok(a) if !a.is_multicast() => bad("is not a multicast address (224.0.0.0-239.255.255.255)"),
        Ok(a) => Ok(a),
    }
}

/// `vxlanMode`, `vxlanFamily` and `vxlanGrp` together: a group only in multicast mode, and of
/// the family.
fn check_flooding(errors: &mut Errors, spec: &LanSpec) {
    let Some(group) = &spec.vxlan_grp else { return };
    if spec.vxlan_mode == VxlanMode::Unicast {
        errors.add(
            "spec.vxlanGrp",
            format!(
                "{group:?} is set but vxlanMode is unicast, which sends floods to each peer node instead of a group; remove spec.vxlanGrp"
            ),
        );
        return;
    }
    match multicast_group("spec.vxlanGrp", group) {
        Err(e) => errors.check(Err(e)),
        Ok(addr) if VxlanFamily::of(&addr) != spec.vxlan_family => errors.add(
            "spec.vxlanGrp",
            format!(
                "{group:?} is an {} group but vxlanFamily is {}; use a group of that family or set vxlanFamily: {}",
                VxlanFamily::of(&addr),
                spec.vxlan_family,
                VxlanFamily::of(&addr)
            ),
        ),
        Ok(_) => {}
    }
}

/// The spelling the CRD schema's pattern for `vxlanGrp` accepts.
fn group_spelling_ok(group: &str) -> bool {
    let b = group.as_bytes();
    b.len() <= 39
        && b.len() >= 6
        && b[..2].eq_ignore_ascii_case(b"ff")
        && b[2..4].iter().all(u8::is_ascii_hexdigit)
        && b[4] == b':'
        && b[5..].iter().all(|c| c.is_ascii_hexdigit() || *c == b':')
}

/// An underlay device (`defaultVxlanDev`, a `vxlanDevMap` value): an interface name that is not
/// `lo` (it carries nothing to other nodes) and not named like a link k8slan makes itself (a VM
/// spoke's macvtap). That it is no spoke of any LAN is checked with the spokes
/// ([`validate_spec`] for the LAN's own, the webhook across LANs).
pub fn underlay_name(field: &str, name: &str) -> Result<(), FieldError> {
    interface_name(field, name)?;
    if name == "lo" {
        return Err(FieldError::new(
            field,
            "\"lo\" cannot carry the VXLAN to other nodes; name the node's underlay interface (e.g. eth1)",
        ));
    }
    no_macvtap_prefix(
        field,
        name,
        "; name the node's underlay interface (e.g. eth1)",
    )
}

/// Refuses a name that starts with one of [`MACVTAP_PREFIXES`]; `fix` ends the message.
fn no_macvtap_prefix(field: &str, name: &str, fix: &str) -> Result<(), FieldError> {
    match MACVTAP_PREFIXES.iter().find(|p| name.starts_with(*p)) {
        Some(p) => Err(FieldError::new(
            field,
            format!(
                "{name:?} starts with {p:?}, the prefix of the macvtaps k8slan makes for VM spokes{fix}"
            ),
        )),
        None => Ok(()),
    }
}

/// A bridge or VXLAN name: an interface name other than `lo`, which every LAN namespace has.
pub fn lan_link_name(field: &str, name: &str) -> Result<(), FieldError> {
    interface_name(field, name)?;
    if name == "lo" {
        return Err(FieldError::new(
            field,
            "\"lo\" is the loopback of the LAN namespace; pick another interface name",
        ));
    }
    Ok(())
}

/// A UDP port, 1–65535.
pub fn port(field: &str, port: u16) -> Result<(), FieldError> {
    if port == 0 {
        Err(FieldError::new(
            field,
            "0 is not a usable port; use 1-65535 (VXLAN's default is 4789)",
        ))
    } else {
        Ok(())
    }
}

fn dns_label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

fn dns_subdomain_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(dns_label_ok)
}

/// `Ok` when the rule holds, else the error on `field` with the message `explain` writes.
fn require(holds: bool, field: &str, explain: impl FnOnce() -> String) -> Result<(), FieldError> {
    if holds {
        Ok(())
    } else {
        Err(FieldError::new(field, explain()))
    }
}

/// A Kubernetes node name (DNS-1123 subdomain), as used for `vxlanDevMap` keys.
pub fn node_name(field: &str, name: &str) -> Result<(), FieldError> {
    require(dns_subdomain_ok(name), field, || {
        format!(
            "{name:?} is not a Kubernetes node name (lowercase DNS subdomain, at most 253 characters)"
        )
    })
}

/// A Kubernetes namespace name (DNS-1123 label: at most 63 lowercase letters, digits or '-').
pub fn namespace_name(field: &str, name: &str) -> Result<(), FieldError> {
    require(dns_label_ok(name), field, || {
        format!(
            "{name:?} is not a namespace name (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
        )
    })
}

/// The name of an object that must be a DNS-1123 subdomain (Secrets, Services' DNS names,
/// webhook configurations), e.g. for a controller flag that names one.
pub fn object_name(field: &str, name: &str) -> Result<(), FieldError> {
    require(dns_subdomain_ok(name), field, || {
        format!("{name:?} is not an object name (lowercase DNS subdomain, at most 253 characters)")
    })
}

/// A Service name (DNS-1035 label: starts with a letter).
pub fn service_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = dns_label_ok(name) && name.starts_with(|c: char| c.is_ascii_lowercase());
    require(ok, field, || {
        format!(
            "{name:?} is not a Service name (1-63 lowercase letters, digits or '-', starting with a letter)"
        )
    })
}

/// An absolute directory on a node given to k8slan (e.g. the agents' `--dev-dir`): starts with
/// `/`, has no `.` or `..` component and no control character, at most 4095 bytes.
pub fn node_directory(field: &str, path: &str) -> Result<(), FieldError> {
    let ok = path.starts_with('/')
        && path.len() < 4096
        && !path.split('/').any(|c| c == "." || c == "..")
        && !path.chars().any(char::is_control);
    require(ok, field, || {
        format!(
            "{path:?} must be an absolute path without '.' or '..' components or control characters"
        )
    })
}

/// A LAN's `metadata.name`: a DNS subdomain of at most 63 characters, because its
/// NetworkAttachmentDefinitions carry it as a label value.
pub fn lan_name(field: &str, name: &str) -> Result<(), FieldError> {
    if dns_subdomain_ok(name) && name.len() <= MAX_LAN_NAME_LEN {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{name:?} is {} characters long; a LAN name is a lowercase DNS subdomain of at most {MAX_LAN_NAME_LEN} characters (its NADs carry it as a label value)",
                name.len()
            ),
        ))
    }
}

/// A spoke name that is also safe next to the node's own interfaces: [`spoke_name`], not one of
/// [`RESERVED_SPOKE_NAMES`], and not starting with a macvtap prefix ([`MACVTAP_PREFIXES`]).
pub fn spoke_name_on_node(field: &str, name: &str) -> Result<(), FieldError> {
    spoke_name(field, name)?;
    if RESERVED_SPOKE_NAMES.contains(&name) {
        return Err(FieldError::new(
            field,
            format!(
                "{name:?} is a well-known interface of a node (reserved: {}); a spoke's host end is created under the spoke's name, so rename the spoke",
                RESERVED_SPOKE_NAMES.join(", ")
            ),
        ));
    }
    no_macvtap_prefix(
        field,
        name,
        " (spoke x has macvtap mvt-x); rename the spoke",
    )
}

/// Broken rules collected in field order.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn check(&mut self, r: Result<(), FieldError>) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }

    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    fn finish(self) -> Result<(), InvalidLan> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(InvalidLan(self.0))
        }
    }
}

/// Every rule of a LAN spec. Returns all broken rules, not just the first.
pub fn validate_spec(spec: &LanSpec) -> Result<(), InvalidLan> {
    let mut errors = Errors::default();
    check_links(&mut errors, spec);
    check_underlays(&mut errors, spec);
    check_spokes(&mut errors, spec);
    check_allowed_namespaces(&mut errors, &spec.allowed_namespaces);
    errors.finish()
}

/// Every rule of a LAN: its name, [`validate_spec`], and the rules that need the LAN's own
/// namespace (`spec.allowedNamespaces` must not repeat it). The webhook calls this.
pub fn validate_lan(namespace: &str, name: &str, spec: &LanSpec) -> Result<(), InvalidLan> {
    let mut errors = Errors::default();
    errors.check(lan_name("metadata.name", name));
    if let Err(InvalidLan(e)) = validate_spec(spec) {
        errors.0.extend(e);
    }
    if let Some(i) = spec.allowed_namespaces.iter().position(|n| n == namespace) {
        errors.add(
            format!("spec.allowedNamespaces[{i}]"),
            format!(
                "{namespace:?} is the LAN's own namespace, whose pods may always use it; list only other namespaces"
            ),
        );
    }
    errors.finish()
}

fn check_links(errors: &mut Errors, spec: &LanSpec) {
    errors.check(netns_name("spec.ns", &spec.ns));
    errors.check(lan_link_name("spec.bridge", &spec.bridge));
    errors.check(lan_link_name("spec.vxlan", &spec.vxlan));
    if spec.bridge == spec.vxlan {
        errors.add(
            "spec.vxlan",
            format!(
                "{:?} is also the bridge name; bridge and vxlan must differ",
                spec.vxlan
            ),
        );
    }
    errors.check(vni("spec.vni", spec.vni));
    check_flooding(errors, spec);
    errors.check(port("spec.vxlanPort", spec.vxlan_port));
}

fn check_underlays(errors: &mut Errors, spec: &LanSpec) {
    if let Some(dev) = &spec.default_vxlan_dev {
        errors.check(underlay_name("spec.defaultVxlanDev", dev));
    }
    for (node, dev) in &spec.vxlan_dev_map {
        errors.check(node_name("spec.vxlanDevMap", node));
        errors.check(underlay_name(&format!("spec.vxlanDevMap[{node}]"), dev));
    }
}

/// Every underlay device name a LAN uses on some node.
pub fn underlays(spec: &LanSpec) -> BTreeSet<&str> {
    spec.default_vxlan_dev
        .iter()
        .chain(spec.vxlan_dev_map.values())
        .map(String::as_str)
        .collect()
}

fn check_spokes(errors: &mut Errors, spec: &LanSpec) {
    if spec.spokes.is_empty() || spec.spokes.len() > MAX_SPOKES {
        errors.add(
            "spec.spokes",
            format!(
                "has {} entries; a LAN needs between 1 and {MAX_SPOKES} spokes",
                spec.spokes.len()
            ),
        );
    }
    let devs = underlays(spec);
    let mut seen = BTreeSet::new();
    for (i, spoke) in spec.spokes.iter().enumerate() {
        let field = format!("spec.spokes[{i}]");
        errors.check(spoke_name_on_node(&field, spoke));
        if !seen.insert(spoke.as_str()) {
            errors.add(
                &field,
                format!("{spoke:?} is listed twice; spoke names must be unique"),
            );
        }
        if spoke == &spec.bridge || spoke == &spec.vxlan {
            errors.add(
                &field,
                format!(
                    "{spoke:?} is also the name of the bridge or the vxlan, which share the LAN namespace with the spoke ports; rename the spoke"
                ),
            );
        }
        if devs.contains(spoke.as_str()) {
            errors.add(
                &field,
                format!(
                    "{spoke:?} is also an underlay device of this LAN (defaultVxlanDev or vxlanDevMap); a spoke's host end is a link k8slan creates under the spoke's name, so rename the spoke"
                ),
            );
        }
    }
}

fn check_allowed_namespaces(errors: &mut Errors, allowed: &[String]) {
    if allowed.len() > MAX_ALLOWED_NAMESPACES {
        errors.add(
            "spec.allowedNamespaces",
            format!(
                "has {} entries; list at most {MAX_ALLOWED_NAMESPACES} namespaces",
                allowed.len()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, ns) in allowed.iter().enumerate() {
        let field = format!("spec.allowedNamespaces[{i}]");
        errors.check(namespace_name(&field, ns));
        if !seen.insert(ns.as_str()) {
            errors.add(&field, format!("{ns:?} is listed twice"));
        }
    }
}

/// Longest accepted CNI network name.
pub const MAX_CNI_NETWORK_NAME: usize = 253;
/// Longest accepted container ID (`CNI_CONTAINERID`).
pub const MAX_CONTAINER_ID: usize = 1024;
/// Longest accepted path (PATH_MAX - 1).
pub const MAX_PATH_LEN: usize = 4095;
/// Longest accepted file name (NAME_MAX).
pub const MAX_FILE_NAME: usize = 255;

/// The first 64 characters of `s`, for messages.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

fn word_rule(name: &str, max: usize) -> bool {
    name.len() <= max
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A CNI network name (CNI 1.0.0): a letter or digit, then letters, digits, `_`, `.` or `-`.
pub fn cni_network_name(field: &str, name: &str) -> Result<(), FieldError> {
    require(word_rule(name, MAX_CNI_NETWORK_NAME), field, || {
        format!(
            "{:?} must start with a letter or digit and contain only letters, digits, '_', '.' or '-' (at most {MAX_CNI_NETWORK_NAME})",
            shown(name)
        )
    })
}

/// A container ID (CNI 1.0.0): a letter or digit, then letters, digits, `_`, `.` or `-`.
pub fn container_id(field: &str, id: &str) -> Result<(), FieldError> {
    require(word_rule(id, MAX_CONTAINER_ID), field, || {
        format!(
            "{:?} must start with a letter or digit and contain only letters, digits, '_', '.' or '-' (at most {MAX_CONTAINER_ID} characters)",
            shown(id)
        )
    })
}

/// An absolute, normalized path: starts with `/`, no empty, `.` or `..` components, no control
/// characters, at most [`MAX_PATH_LEN`] bytes, not `/` itself.
pub fn normalized_absolute_path(field: &str, path: &str) -> Result<(), FieldError> {
    let why = if path.len() > MAX_PATH_LEN {
        "is too long"
    } else if !path.starts_with('/') {
        "is not an absolute path"
    } else if path.chars().any(char::is_control) {
        "contains control characters"
    } else if path[1..].is_empty()
        || path[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        "is not a normalized path (empty, '.' or '..' components)"
    } else {
        return Ok(());
    };
    Err(FieldError::new(
        field,
        format!("{:?} {why}", path.chars().take(128).collect::<String>()),
    ))
}

/// An absolute directory without `..` components or control characters (a `CNI_PATH` entry).
pub fn absolute_dir(field: &str, path: &str) -> Result<(), FieldError> {
    let ok = path.starts_with('/')
        && path.len() <= MAX_PATH_LEN
        && !path.split('/').any(|c| c == "..")
        && !path.chars().any(char::is_control);
    require(ok, field, || {
        format!(
            "entry {:?} is not an absolute directory without '..'",
            path.chars().take(128).collect::<String>()
        )
    })
}

/// A bare file name (one path component): not empty, `.` or `..`, no `/` or control characters.
pub fn file_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    require(ok, field, || {
        format!(
            "{:?} must be a bare file name (no '/', not '.' or '..', at most {MAX_FILE_NAME} bytes)",
            shown(name)
        )
    })
}

/// A `CNI_ARGS` key: letters, digits, `_` or `-`.
pub fn cni_args_key(field: &str, key: &str) -> Result<(), FieldError> {
    let ok = !key.is_empty()
        && key.len() <= 256
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    require(ok, field, || {
        format!("key {:?} must be letters, digits, '_' or '-'", shown(key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec() -> LanSpec {
        LanSpec {
            ns: "knlvrf".into(),
            bridge: "br2".into(),
            vxlan: "vx2".into(),
            vni: 222,
            vxlan_grp: Some("ff02::14".into()),
            vxlan_port: 4789,
            vxlan_mode: VxlanMode::Multicast,
            vxlan_family: VxlanFamily::Ipv6,
            default_vxlan_dev: Some("eth0".into()),
            vxlan_dev_map: BTreeMap::from([("worker1".into(), "eth1".into())]),
            spokes: vec!["srl".into(), "vm".into()],
            macvtap_mode: Default::default(),
            allowed_namespaces: Vec::new(),
        }
    }

    fn fields(spec: &LanSpec) -> Vec<String> {
        match validate_spec(spec) {
            Ok(()) => vec![],
            Err(InvalidLan(errs)) => errs.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn seed_example_is_valid() {
        assert_eq!(validate_spec(&spec()), Ok(()));
    }

    #[test]
    fn interface_names() {
        for good in ["eth1", "br-2", "a", "x.y", "ens3f0np0", "abcdefghijklmno"] {
            assert_eq!(interface_name("f", good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "tab\t",
            "abcdefghijklmnop",
            "\u{7f}x",
            "é",
        ] {
            let err = interface_name("spec.bridge", bad).unwrap_err();
            assert_eq!(err.field, "spec.bridge");
            assert!(err.message.contains("interface name"), "{err}");
        }
    }

    #[test]
    fn netns_names_never_escape_the_directory() {
        for good in ["knlvrf", "lan_1", "a.b-c", "0"] {
            assert_eq!(netns_name("spec.ns", good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "/abs",
            ".hidden",
            "-x",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(netns_name("spec.ns", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spoke_names() {
        for good in ["srl", "vm", "a", "e1-1", "abcdefghijklmno"] {
            assert_eq!(spoke_name("s", good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Srl",
            "a_b",
            "a.b",
            "abcdefghijklmnop",
            "a/b",
        ] {
            assert!(spoke_name("s", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numbers() {
        assert!(vni("v", 0).is_err());
        assert!(vni("v", 1).is_ok());
        assert!(vni("v", MAX_VNI).is_ok());
        assert!(vni("v", MAX_VNI + 1).is_err());
        assert!(port("p", 0).is_err());
        assert!(port("p", 65535).is_ok());
    }

    #[test]
    fn groups() {
        assert!(multicast_group("g", "ff02::14").is_ok());
        assert!(multicast_group("g", "ff05::100").is_ok());
        assert!(
            multicast_group("g", "fe80::1")
                .unwrap_err()
                .message
                .contains("not a multicast")
        );
        assert_eq!(
            multicast_group("g", "239.1.1.1"),
            Ok("239.1.1.1".parse().unwrap())
        );
        assert!(
            multicast_group("g", "198.18.0.1")
                .unwrap_err()
                .message
                .contains("not a multicast")
        );
        assert!(
            multicast_group("g", "300.1.1.1")
                .unwrap_err()
                .message
                .contains("dotted decimal")
        );
    }

    #[test]
    fn a_group_only_in_multicast_mode_and_of_the_family() {
        let mut s = spec();
        s.vxlan_mode = VxlanMode::Unicast;
        let msg = validate_spec(&s).unwrap_err().to_string();
        assert!(msg.contains("spec.vxlanGrp"), "{msg}");
        assert!(msg.contains("remove spec.vxlanGrp"), "{msg}");
        s.vxlan_grp = None;
        assert_eq!(fields(&s), Vec::<String>::new());
        s.vxlan_family = VxlanFamily::Ipv4;
        assert_eq!(fields(&s), Vec::<String>::new());
        s.vxlan_mode = VxlanMode::Multicast;
        s.vxlan_grp = Some("ff02::14".into());
        let msg = validate_spec(&s).unwrap_err().to_string();
        assert!(
            msg.contains("an ipv6 group but vxlanFamily is ipv4"),
            "{msg}"
        );
        s.vxlan_grp = Some("239.1.20.20".into());
        assert_eq!(fields(&s), Vec::<String>::new());
        s.vxlan_grp = None;
        assert_eq!(s.group(), Some("239.1.20.20".parse().unwrap()));
    }

    #[test]
    fn spec_errors_name_every_field() {
        let mut s = spec();
        s.ns = "../../etc".into();
        s.vni = 0;
        s.vxlan = s.bridge.clone();
        s.spokes = vec!["srl".into(), "srl".into(), "br2".into(), "BAD".into()];
        let f = fields(&s);
        assert_eq!(
            f,
            vec![
                "spec.ns",
                "spec.vxlan",
                "spec.vni",
                "spec.spokes[1]",
                "spec.spokes[2]",
                "spec.spokes[3]"
            ]
        );
        let msg = validate_spec(&s).unwrap_err().to_string();
        assert!(msg.contains("spec.ns: \"../../etc\""), "{msg}");
        assert!(msg.contains("listed twice"), "{msg}");
    }

    #[test]
    fn spoke_count_limits() {
        let mut s = spec();
        s.spokes.clear();
        assert_eq!(fields(&s), vec!["spec.spokes"]);
        s.spokes = (0..=MAX_SPOKES).map(|i| format!("s{i}")).collect();
        assert_eq!(fields(&s), vec!["spec.spokes"]);
        s.spokes.pop();
        assert_eq!(fields(&s), Vec::<String>::new());
    }

    #[test]
    fn underlay_may_be_the_uplink_and_is_checked() {
        let mut s = spec();
        s.default_vxlan_dev = None;
        s.vxlan_dev_map.clear();
        assert_eq!(fields(&s), Vec::<String>::new());
        assert_eq!(s.underlay_for("worker1", Some("eth0")), Some("eth0"));
        s.vxlan_dev_map.insert("worker1".into(), "eth1".into());
        assert_eq!(s.underlay_for("worker2", Some("eth0")), None);
        s.vxlan_dev_map.insert("Worker_1".into(), "eth1/x".into());
        assert_eq!(
            fields(&s),
            vec!["spec.vxlanDevMap", "spec.vxlanDevMap[Worker_1]"]
        );
    }

    #[test]
    fn group_scopes_and_spellings() {
        for good in [
            "ff02::14",
            "FF02::14",
            "ff05::100",
            "ff3e::1",
            "ff0e::1",
            "ff02:0:0:0:0:0:0:14",
        ] {
            assert!(multicast_group("g", good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("ff01::1", "interface-local"),
            ("FF11::1", "interface-local"),
            ("ff00::1", "reserved"),
            ("ff3f::1", "reserved"),
            ("ff2::1", "not a multicast"),
            ("::ffff:239.1.1.1", "not a multicast"),
            ("ff02::0.0.0.20", "plain hex"),
            ("ff02::1%eth0", "not an IPv6"),
        ] {
            let e = multicast_group("spec.vxlanGrp", bad).unwrap_err();
            assert!(e.message.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn underlays_links_and_spokes_next_to_node_interfaces() {
        assert!(underlay_name("d", "eth1").is_ok());
        for bad in ["lo", "mvt-x", "mvh-1234abcd", "a/b"] {
            assert!(underlay_name("d", bad).is_err(), "{bad}");
        }
        assert!(lan_link_name("b", "lo").is_err());
        assert!(lan_link_name("b", "br0").is_ok());
        for bad in RESERVED_SPOKE_NAMES
            .iter()
            .copied()
            .chain(["mvt-a", "mvh-x"])
        {
            assert!(spoke_name_on_node("s", bad).is_err(), "{bad}");
        }
        assert!(spoke_name_on_node("s", "mvtx").is_ok());
        let mut s = spec();
        s.spokes.push("eth1".into());
        assert_eq!(fields(&s), vec!["spec.spokes[2]"]);
    }

    #[test]
    fn lan_level_rules() {
        let mut s = spec();
        assert_eq!(validate_lan("team", &"n".repeat(63), &s), Ok(()));
        s.allowed_namespaces = vec!["other".into(), "team".into(), "other".into(), "Bad".into()];
        let InvalidLan(errs) = validate_lan("team", &"n".repeat(64), &s).unwrap_err();
        let f: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            f,
            [
                "metadata.name",
                "spec.allowedNamespaces[2]",
                "spec.allowedNamespaces[3]",
                "spec.allowedNamespaces[1]"
            ]
        );
    }

    #[test]
    fn flag_values() {
        assert!(node_directory("--dev-dir", "/run/k8slan/dev").is_ok());
        for bad in ["run/x", "/a/../b", "/a/./b", "/a\nb", ""] {
            assert!(node_directory("--dev-dir", bad).is_err(), "{bad}");
        }
        assert!(service_name("s", "k8slan-webhook").is_ok());
        assert!(service_name("s", "1abc").is_err());
        assert!(object_name("o", "a.b-c").is_ok());
        assert!(object_name("o", "A").is_err());
        assert!(namespace_name("n", "k8slan-system").is_ok());
        assert!(namespace_name("n", "a.b").is_err());
    }

    #[test]
    fn the_schema_carries_the_same_reserved_names_and_prefixes() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_string(&crate::LAN::crd()).unwrap();
        for name in RESERVED_SPOKE_NAMES {
            assert!(
                crd.contains(&format!("'{name}'")),
                "{name} missing from the CRD's CEL"
            );
        }
        for p in MACVTAP_PREFIXES {
            assert!(crd.contains(&format!("startsWith('{p}')")), "{p}");
        }
    }
}
