//! MTU arithmetic of a LAN: every link of the LAN gets the underlay MTU less the VXLAN overhead,
//! so a full-size frame from a member never needs fragmenting on the underlay.

use crate::lan::VxlanFamily;

/// Bytes an IPv6 VXLAN adds to an inner frame: outer IPv6 (40) + UDP (8) + VXLAN (8) + the inner
/// Ethernet header (14), which the underlay carries as payload.
pub const VXLAN_IPV6_OVERHEAD: u32 = 70;
/// Bytes an IPv4 VXLAN adds: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_IPV4_OVERHEAD: u32 = 50;

/// What a VXLAN of `family` adds to every inner frame.
pub fn overhead(family: VxlanFamily) -> u32 {
    match family {
        VxlanFamily::Ipv6 => VXLAN_IPV6_OVERHEAD,
        VxlanFamily::Ipv4 => VXLAN_IPV4_OVERHEAD,
    }
}
/// Smallest MTU Linux accepts on an Ethernet link that carries IPv4.
pub const MIN_LAN_MTU: u32 = 68;
/// Smallest MTU IPv6 needs (RFC 8200); a LAN below it still carries frames but not IPv6.
pub const IPV6_MIN_MTU: u32 = 1280;

/// Why no LAN MTU fits the underlay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "underlay MTU {underlay} leaves {available} bytes after the {overhead}-byte {family} VXLAN overhead; a LAN needs at least {MIN_LAN_MTU}: raise the underlay MTU"
)]
pub struct MtuTooSmall {
    pub underlay: u32,
    pub available: i64,
    pub overhead: u32,
    pub family: VxlanFamily,
}

/// The MTU every link of a LAN gets on a node whose underlay has `underlay_mtu`, for a VXLAN of
/// `family`.
pub fn lan_mtu(underlay_mtu: u32, family: VxlanFamily) -> Result<u32, MtuTooSmall> {
    let overhead = overhead(family);
    let available = i64::from(underlay_mtu) - i64::from(overhead);
    if available < i64::from(MIN_LAN_MTU) {
        return Err(MtuTooSmall {
            underlay: underlay_mtu,
            available,
            overhead,
            family,
        });
    }
    Ok(underlay_mtu - overhead)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V6: VxlanFamily = VxlanFamily::Ipv6;
    const V4: VxlanFamily = VxlanFamily::Ipv4;

    #[test]
    fn standard_and_jumbo_underlays() {
        assert_eq!(lan_mtu(1500, V6), Ok(1430));
        assert_eq!(lan_mtu(9000, V6), Ok(8930));
        assert_eq!(lan_mtu(138, V6), Ok(68));
    }

    #[test]
    fn an_ipv4_underlay_costs_twenty_bytes_less() {
        assert_eq!(lan_mtu(1500, V4), Ok(1450));
        assert_eq!(lan_mtu(118, V4), Ok(68));
        assert!(lan_mtu(117, V4).is_err());
    }

    #[test]
    fn too_small_underlay_is_an_error_that_says_why() {
        let err = lan_mtu(100, V6).unwrap_err();
        assert_eq!(err.available, 30);
        let text = err.to_string();
        assert!(text.contains("70-byte ipv6 VXLAN overhead"), "{text}");
        assert!(text.contains("raise the underlay MTU"), "{text}");
        assert!(lan_mtu(0, V4).is_err());
    }
}
