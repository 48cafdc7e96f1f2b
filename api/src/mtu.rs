//! MTU arithmetic of a LAN: every link of the LAN gets the underlay MTU less the VXLAN overhead,
//! so a full-size frame from a member never needs fragmenting on the underlay.

/// Bytes an IPv6 VXLAN adds to an inner frame: outer IPv6 (40) + UDP (8) + VXLAN (8) + the inner
/// Ethernet header (14), which the underlay carries as payload.
pub const VXLAN_IPV6_OVERHEAD: u32 = 70;
/// Smallest MTU Linux accepts on an Ethernet link that carries IPv4.
pub const MIN_LAN_MTU: u32 = 68;
/// Smallest MTU IPv6 needs (RFC 8200); a LAN below it still carries frames but not IPv6.
pub const IPV6_MIN_MTU: u32 = 1280;

/// Why no LAN MTU fits the underlay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "underlay MTU {underlay} leaves {available} bytes after the {VXLAN_IPV6_OVERHEAD}-byte VXLAN overhead; a LAN needs at least {MIN_LAN_MTU}: raise the underlay MTU"
)]
pub struct MtuTooSmall {
    pub underlay: u32,
    pub available: i64,
}

/// The MTU every link of a LAN gets on a node whose underlay has `underlay_mtu`.
pub fn lan_mtu(underlay_mtu: u32) -> Result<u32, MtuTooSmall> {
    let available = i64::from(underlay_mtu) - i64::from(VXLAN_IPV6_OVERHEAD);
    if available < i64::from(MIN_LAN_MTU) {
        return Err(MtuTooSmall {
            underlay: underlay_mtu,
            available,
        });
    }
    Ok(underlay_mtu - VXLAN_IPV6_OVERHEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_and_jumbo_underlays() {
        assert_eq!(lan_mtu(1500), Ok(1430));
        assert_eq!(lan_mtu(9000), Ok(8930));
        assert_eq!(lan_mtu(138), Ok(68));
    }

    #[test]
    fn too_small_underlay_is_an_error_that_says_why() {
        let err = lan_mtu(100).unwrap_err();
        assert_eq!(err.available, 30);
        assert!(err.to_string().contains("raise the underlay MTU"));
        assert!(lan_mtu(0).is_err());
    }
}
