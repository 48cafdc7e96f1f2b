//! Ethernet hardware addresses as CNI writes them (`aa:bb:cc:dd:ee:ff`).

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a usable MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error(
        "{0:?} is not a MAC address; write six hex pairs separated by ':', e.g. 02:00:5e:10:00:01"
    )]
    Syntax(String),
    #[error(
        "{0} is a multicast address; an interface needs a unicast MAC (lowest bit of the first byte 0), e.g. 02:00:5e:10:00:01"
    )]
    Multicast(MacAddr),
    #[error(
        "00:00:00:00:00:00 cannot be an interface address; use a unicast MAC such as 02:00:5e:10:00:01"
    )]
    Zero,
}

impl MacAddr {
    /// Parses and checks that the address can be set on an interface.
    pub fn parse_unicast(s: &str) -> Result<MacAddr, MacError> {
        let mac: MacAddr = s.parse()?;
        if mac.0 == [0; 6] {
            return Err(MacError::Zero);
        }
        if mac.0[0] & 1 == 1 {
            return Err(MacError::Multicast(mac));
        }
        Ok(mac)
    }

    /// From a kernel attribute; `None` unless exactly six bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || MacError::Syntax(s.chars().take(64).collect());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(syntax)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let m = MacAddr::parse_unicast("02:AA:bb:0c:0d:0e").unwrap();
        assert_eq!(m.to_string(), "02:aa:bb:0c:0d:0e");
        assert_eq!("02-aa-bb-0c-0d-0e".parse::<MacAddr>().unwrap(), m);
    }

    #[test]
    fn rejects_unusable() {
        for bad in [
            "",
            "02:aa:bb:0c:0d",
            "02:aa:bb:0c:0d:0e:0f",
            "0g:aa:bb:0c:0d:0e",
            "2:aa:bb:0c:0d:0e",
            "+2:aa:bb:0c:0d:0e",
        ] {
            assert!(
                matches!(MacAddr::parse_unicast(bad), Err(MacError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(
            MacAddr::parse_unicast("00:00:00:00:00:00"),
            Err(MacError::Zero)
        );
        assert!(matches!(
            MacAddr::parse_unicast("01:00:5e:00:00:01"),
            Err(MacError::Multicast(_))
        ));
    }
}
