//! Pure validation rules for every name and number that reaches a path, an interface or a
//! netlink call. The CRD schema mirrors these rules; the agent, the CNI plugins and the webhook
//! call them directly, so a value that passes here is safe to use as root.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv6Addr;

use crate::lan::LanSpec;

/// Highest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = 16_777_215;
/// Most spokes one LAN may have.
pub const MAX_SPOKES: usize = 4095;
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest LAN namespace name.
pub const MAX_NETNS_LEN: usize = 63;

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

/// An IPv6 multicast group such as `ff02::14`.
pub fn multicast_group(field: &str, group: &str) -> Result<Ipv6Addr, FieldError> {
    match group.parse::<Ipv6Addr>() {
        Ok(addr) if addr.is_multicast() => Ok(addr),
        Ok(_) => Err(FieldError::new(
            field,
            format!(
                "{group:?} is not a multicast address; use an IPv6 multicast group such as ff02::14"
            ),
        )),
        Err(_) => Err(FieldError::new(
            field,
            format!(
                "{group:?} is not an IPv6 address; use an IPv6 multicast group such as ff02::14"
            ),
        )),
    }
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

/// A Kubernetes node name (DNS-1123 subdomain), as used for `vxlanDevMap` keys.
pub fn node_name(field: &str, name: &str) -> Result<(), FieldError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{name:?} is not a Kubernetes node name (lowercase DNS subdomain, at most 253 characters)"
            ),
        ))
    }
}

/// Every rule of a LAN spec. Returns all broken rules, not just the first.
pub fn validate_spec(spec: &LanSpec) -> Result<(), InvalidLan> {
    let mut errors = Vec::new();
    let mut check = |r: Result<(), FieldError>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    check(netns_name("spec.ns", &spec.ns));
    check(interface_name("spec.bridge", &spec.bridge));
    check(interface_name("spec.vxlan", &spec.vxlan));
    if spec.bridge == spec.vxlan {
        check(Err(FieldError::new(
            "spec.vxlan",
            format!(
                "{:?} is also the bridge name; bridge and vxlan must differ",
                spec.vxlan
            ),
        )));
    }
    check(vni("spec.vni", spec.vni));
    check(multicast_group("spec.vxlanGrp", &spec.vxlan_grp).map(|_| ()));
    check(port("spec.vxlanPort", spec.vxlan_port));
    if let Some(dev) = &spec.default_vxlan_dev {
        check(interface_name("spec.defaultVxlanDev", dev));
    }
    for (node, dev) in &spec.vxlan_dev_map {
        check(node_name("spec.vxlanDevMap", node));
        check(interface_name(&format!("spec.vxlanDevMap[{node}]"), dev));
    }
    if spec.default_vxlan_dev.is_none() && spec.vxlan_dev_map.is_empty() {
        check(Err(FieldError::new(
            "spec.defaultVxlanDev",
            "no underlay device: set defaultVxlanDev, or vxlanDevMap for every node that should join the LAN",
        )));
    }
    if spec.spokes.is_empty() || spec.spokes.len() > MAX_SPOKES {
        check(Err(FieldError::new(
            "spec.spokes",
            format!(
                "has {} entries; a LAN needs between 1 and {MAX_SPOKES} spokes",
                spec.spokes.len()
            ),
        )));
    }
    let mut seen = BTreeSet::new();
    for (i, spoke) in spec.spokes.iter().enumerate() {
        let field = format!("spec.spokes[{i}]");
        check(spoke_name(&field, spoke));
        if !seen.insert(spoke.as_str()) {
            check(Err(FieldError::new(
                &field,
                format!("{spoke:?} is listed twice; spoke names must be unique"),
            )));
        }
        if spoke == &spec.bridge || spoke == &spec.vxlan || spoke == "lo" {
            check(Err(FieldError::new(
                &field,
                format!(
                    "{spoke:?} is also the name of the bridge, the vxlan or lo, which share the LAN namespace with the spoke ports; rename the spoke"
                ),
            )));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidLan(errors))
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
    if word_rule(name, MAX_CNI_NETWORK_NAME) {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        format!(
            "{:?} must start with a letter or digit and contain only letters, digits, '_', '.' or '-' (at most {MAX_CNI_NETWORK_NAME})",
            shown(name)
        ),
    ))
}

/// A container ID (CNI 1.0.0): a letter or digit, then letters, digits, `_`, `.` or `-`.
pub fn container_id(field: &str, id: &str) -> Result<(), FieldError> {
    if word_rule(id, MAX_CONTAINER_ID) {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        format!(
            "{:?} must start with a letter or digit and contain only letters, digits, '_', '.' or '-' (at most {MAX_CONTAINER_ID} characters)",
            shown(id)
        ),
    ))
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
    if ok {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        format!(
            "entry {:?} is not an absolute directory without '..'",
            path.chars().take(128).collect::<String>()
        ),
    ))
}

/// A bare file name (one path component): not empty, `.` or `..`, no `/` or control characters.
pub fn file_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    if ok {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        format!(
            "{:?} must be a bare file name (no '/', not '.' or '..', at most {MAX_FILE_NAME} bytes)",
            shown(name)
        ),
    ))
}

/// A `CNI_ARGS` key: letters, digits, `_` or `-`.
pub fn cni_args_key(field: &str, key: &str) -> Result<(), FieldError> {
    let ok = !key.is_empty()
        && key.len() <= 256
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        format!("key {:?} must be letters, digits, '_' or '-'", shown(key)),
    ))
}

/// A Kubernetes namespace name: a DNS label (`[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63).
pub fn namespace_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        format!(
            "{:?} is not a Kubernetes namespace name (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit)",
            shown(name)
        ),
    ))
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
            vxlan_grp: "ff02::14".into(),
            vxlan_port: 4789,
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
        assert!(
            multicast_group("g", "239.1.1.1")
                .unwrap_err()
                .message
                .contains("not an IPv6")
        );
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
    fn underlay_is_required_and_checked() {
        let mut s = spec();
        s.default_vxlan_dev = None;
        s.vxlan_dev_map.clear();
        assert_eq!(fields(&s), vec!["spec.defaultVxlanDev"]);
        s.vxlan_dev_map.insert("Worker_1".into(), "eth1/x".into());
        assert_eq!(
            fields(&s),
            vec!["spec.vxlanDevMap", "spec.vxlanDevMap[Worker_1]"]
        );
    }
}
