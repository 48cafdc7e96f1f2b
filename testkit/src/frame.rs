//! Raw Ethernet frames: build and parse them, send and receive them on an interface through an
//! `AF_PACKET` socket, or on a macvtap character device (`/dev/tapN` or a node made with mknod).
//!
//! A macvtap fd is opened with `IFF_VNET_HDR`: every frame written to it carries a 10-byte
//! virtio-net header in front (all zero: no offloads), and every frame read from it starts with
//! one, which [`TapDevice`] strips.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// Length of the virtio-net header a macvtap fd expects by default.
pub const VNET_HDR_LEN: usize = 10;
/// LLDP's destination (nearest bridge) and ethertype.
pub const LLDP_DST: Mac = Mac([0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e]);
pub const ETHERTYPE_LLDP: u16 = 0x88cc;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address like 02:00:00:00:00:01"));
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            m[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))?;
        }
        Ok(Mac(m))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Parse an ethertype written in hex, with or without `0x`.
pub fn parse_ethertype(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| format!("{s:?} is not an ethertype in hex such as 88cc"))
}

/// An Ethernet frame (no FCS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub dst: Mac,
    pub src: Mac,
    pub ethertype: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The frame's bytes, padded to the 60-byte Ethernet minimum.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(14 + self.payload.len().max(46));
        b.extend_from_slice(&self.dst.0);
        b.extend_from_slice(&self.src.0);
        b.extend_from_slice(&self.ethertype.to_be_bytes());
        b.extend_from_slice(&self.payload);
        if b.len() < 60 {
            b.resize(60, 0);
        }
        b
    }

    /// Parse a frame; `None` when shorter than an Ethernet header.
    pub fn decode(b: &[u8]) -> Option<Frame> {
        if b.len() < 14 {
            return None;
        }
        let mut dst = [0; 6];
        let mut src = [0; 6];
        dst.copy_from_slice(&b[0..6]);
        src.copy_from_slice(&b[6..12]);
        Some(Frame {
            dst: Mac(dst),
            src: Mac(src),
            ethertype: u16::from_be_bytes([b[12], b[13]]),
            payload: b[14..].to_vec(),
        })
    }

    /// The payload as text, up to the first NUL (padding).
    pub fn payload_text(&self) -> String {
        let end = self
            .payload
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.payload.len());
        String::from_utf8_lossy(&self.payload[..end]).into_owned()
    }

    /// One JSON line: `{"src":..,"dst":..,"ethertype":"88cc","payload":..}`.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"src\":\"{}\",\"dst\":\"{}\",\"ethertype\":\"{:04x}\",\"payload\":{}}}",
            self.src,
            self.dst,
            self.ethertype,
            json_string(&self.payload_text())
        )
    }

    /// The answer an echo responder sends: addresses swapped, payload prefixed with `echo:`.
    pub fn echo(&self, me: Option<Mac>) -> Frame {
        let mut payload = b"echo:".to_vec();
        payload.extend_from_slice(self.payload_text().as_bytes());
        Frame {
            dst: self.src,
            src: me.unwrap_or(self.dst),
            ethertype: self.ethertype,
            payload,
        }
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What a receiver waits for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub ethertype: Option<u16>,
    pub src: Option<Mac>,
}

impl Filter {
    pub fn matches(&self, f: &Frame) -> bool {
        self.ethertype.is_none_or(|e| e == f.ethertype) && self.src.is_none_or(|s| s == f.src)
    }
}

fn wait_readable(fd: i32, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = left.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: pfd is a valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(n > 0)
}

/// A raw `AF_PACKET` socket bound to one interface (in the calling thread's namespace).
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn open(iface: &str) -> io::Result<Self> {
        let name = std::ffi::CString::new(iface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has NUL"))?;
        // SAFETY: name is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {iface}"),
            ));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: plain socket(2) call.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = ifindex;
        // SAFETY: sll is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, ifindex })
    }

    /// Receive every frame on the wire, as a sniffer does: a promiscuous membership of this
    /// socket (dropped with it). Without it a NIC with a receive filter (a VM's virtio NIC, real
    /// hardware) drops multicast it was not told about, such as LLDP's 01:80:c2:00:00:0e; a veth
    /// has no filter.
    pub fn promiscuous(&self) -> io::Result<()> {
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = self.ifindex;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: mreq is a valid packet_mreq of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                &mreq as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::packet_mreq>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The interface's own MAC address.
    pub fn mac(&self) -> io::Result<Mac> {
        let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
        // SAFETY: name has IFNAMSIZ bytes, as if_indextoname requires.
        if unsafe { libc::if_indextoname(self.ifindex as u32, name.as_mut_ptr()) }.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name = name;
        // SAFETY: req is a valid ifreq for SIOCGIFHWADDR.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
        let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
        let mut m = [0u8; 6];
        for (i, b) in m.iter_mut().enumerate() {
            *b = sa.sa_data[i] as u8;
        }
        Ok(Mac(m))
    }

    pub fn send(&self, frame: &Frame) -> io::Result<()> {
        let bytes = frame.encode();
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame.dst.0);
        // SAFETY: buffer and address are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The first incoming frame matching `filter` (frames this host sends are ignored), or
    /// `None` after `timeout`.
    pub fn recv(&self, filter: &Filter, timeout: Duration) -> io::Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        // Not zeroed: the kernel writes what is read (a flood benchmark receives thousands).
        let mut buf: Vec<u8> = Vec::with_capacity(65536);
        while Instant::now() < deadline {
            if !wait_readable(self.fd.as_raw_fd(), deadline)? {
                continue;
            }
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffer and address are valid for the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.capacity(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            // SAFETY: the kernel wrote the first n bytes.
            unsafe { buf.set_len(n as usize) };
            if let Some(f) = Frame::decode(&buf)
                && filter.matches(&f)
            {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }
}

/// A macvtap character device, used as a VM would (with the virtio-net header).
#[derive(Debug)]
pub struct TapDevice {
    file: File,
}

impl TapDevice {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        Ok(Self { file })
    }

    pub fn send(&mut self, frame: &Frame) -> io::Result<()> {
        let mut b = vec![0u8; VNET_HDR_LEN];
        b.extend_from_slice(&frame.encode());
        self.file.write_all(&b)
    }

    pub fn recv(&mut self, filter: &Filter, timeout: Duration) -> io::Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
        while Instant::now() < deadline {
            if !wait_readable(self.file.as_raw_fd(), deadline)? {
                continue;
            }
            let n = self.file.read(&mut buf)?;
            if n <= VNET_HDR_LEN {
                continue;
            }
            if let Some(f) = Frame::decode(&buf[VNET_HDR_LEN..n])
                && filter.matches(&f)
            {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_pad() {
        let f = Frame {
            dst: LLDP_DST,
            src: "02:aa:bb:cc:dd:ee".parse().unwrap(),
            ethertype: ETHERTYPE_LLDP,
            payload: b"hello".to_vec(),
        };
        let b = f.encode();
        assert_eq!(b.len(), 60);
        assert_eq!(&b[12..14], &[0x88, 0xcc]);
        let g = Frame::decode(&b).unwrap();
        assert_eq!(g.payload_text(), "hello");
        assert_eq!(
            g.to_json(),
            r#"{"src":"02:aa:bb:cc:dd:ee","dst":"01:80:c2:00:00:0e","ethertype":"88cc","payload":"hello"}"#
        );
        let e = g.echo(None);
        assert_eq!((e.dst, e.src), (f.src, f.dst));
        assert_eq!(e.payload_text(), "echo:hello");
    }

    #[test]
    fn parsing_errors_say_what_was_expected() {
        assert!("01:02:03".parse::<Mac>().unwrap_err().contains("MAC"));
        assert!("zz:00:00:00:00:00".parse::<Mac>().is_err());
        assert_eq!(parse_ethertype("0x88cc"), Ok(0x88cc));
        assert_eq!(parse_ethertype("88B5"), Ok(0x88b5));
        assert!(parse_ethertype("lldp").is_err());
        let filt = Filter {
            ethertype: Some(1),
            src: None,
        };
        assert!(!filt.matches(&Frame::decode(&[0; 14]).unwrap()));
    }
}
