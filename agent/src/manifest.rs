//! Reading a LAN manifest exactly as a user would `kubectl apply` it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use k8slan_api::{LAN, LanSpec};

/// `apiVersion` a LAN manifest must have.
pub fn api_version() -> String {
    format!("{}/{}", k8slan_api::GROUP, k8slan_api::VERSION)
}

/// Parse a LAN manifest (YAML or JSON): check `apiVersion` and `kind`, apply the serde defaults,
/// and validate the spec. Errors name the field.
pub fn parse(text: &str) -> Result<LAN> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).context("not valid YAML")?;
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let want = api_version();
    match field("apiVersion") {
        Some(v) if v == want => {}
        other => bail!("apiVersion: {other:?} is not {want:?}"),
    }
    match field("kind") {
        Some(k) if k == "LAN" => {}
        other => bail!("kind: {other:?} is not \"LAN\""),
    }
    let lan: LAN = serde_yaml::from_value(value).context("not a valid LAN")?;
    k8slan_api::validate_spec(&lan.spec)?;
    Ok(lan)
}

/// Read and parse a LAN manifest file.
pub fn load(path: &Path) -> Result<LanSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read LAN manifest {}", path.display()))?;
    parse(&text)
        .map(|l| l.spec)
        .with_context(|| format!("LAN manifest {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: lan.k8slan.io/v1beta1
kind: LAN
metadata:
  name: lan-example
spec:
  ns: knlvrf
  bridge: br2
  vxlan: vx2
  vni: 222
  defaultVxlanDev: eth1
  spokes: [srl, vm]
";

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn defaults_are_applied() {
        let lan = parse(GOOD).unwrap();
        assert_eq!(lan.spec.group(), Some("ff02::14".parse().unwrap()));
        assert_eq!(lan.spec.vxlan_port, 4789);
        assert_eq!(lan.spec.macvtap_mode, k8slan_api::MacvtapMode::Passthru);
        assert_eq!(lan.spec.spokes, vec!["srl", "vm"]);
    }

    #[test]
    fn wrong_kind_or_version_is_refused() {
        let e = err(&GOOD.replace("kind: LAN", "kind: Pod"));
        assert!(e.starts_with("kind:") && e.contains("Pod"), "{e}");
        let e = err(&GOOD.replace("v1beta1", "v1"));
        assert!(
            e.starts_with("apiVersion:") && e.contains("lan.k8slan.io/v1"),
            "{e}"
        );
        let e = err(&GOOD.replace("apiVersion: lan.k8slan.io/v1beta1\n", ""));
        assert!(e.starts_with("apiVersion: None"), "{e}");
    }

    #[test]
    fn missing_and_invalid_fields_are_named() {
        let e = err(&GOOD.replace("  vni: 222\n", ""));
        assert!(e.contains("vni"), "{e}");
        let e = err(&GOOD.replace("ns: knlvrf", "ns: ../etc"));
        assert!(e.contains("spec.ns"), "{e}");
        let e = err(&GOOD.replace("vni: 222", "vni: 0"));
        assert!(e.contains("spec.vni"), "{e}");
        let e = err(&GOOD.replace("[srl, vm]", "[srl, br2]"));
        assert!(e.contains("spec.spokes[1]"), "{e}");
        let e = err(&GOOD.replace(
            "  defaultVxlanDev: eth1\n",
            "  vxlanMode: unicast\n  vxlanGrp: ff02::14\n",
        ));
        assert!(e.contains("spec.vxlanGrp"), "{e}");
        let e = err("spec: [");
        assert!(e.contains("YAML"), "{e}");
    }
}
