//! A blocking rtnetlink socket bound to one network namespace.
//!
//! A netlink socket talks to the namespace it was created in, whatever thread later uses it, so
//! a user opens one per namespace (on a short-lived thread inside it, [`crate::NetNs::run`]) and
//! keeps it: a kernel call is then one `sendto` and one or two `recvfrom`, with no thread,
//! runtime or socket set up per call. Requests are strictly one at a time per socket (`&mut
//! self`), so a reply is matched by its sequence number and nothing is ever interleaved. Replies
//! are bounded: a datagram is at most what the kernel sends for one request, and a request that
//! gets no answer fails after [`REPLY_TIMEOUT`].

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// How long a request may wait for the kernel before it is reported as hung.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of replies one request may collect (a dump of every link of a namespace with tens
/// of thousands of links stays far below it); more is reported instead of filling memory.
pub const MAX_REPLY_BYTES: usize = 256 << 20;

/// `NLM_F_CAPPED`: the error message carries only the header of the failed request.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS`: extended-ack attributes follow the (capped) request.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's human-readable reason.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_HEADER_LEN: usize = 16;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The kernel refused the request.
    #[error("{}{}", io::Error::from_raw_os_error(*errno), reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Kernel {
        errno: i32,
        /// The kernel's extended-ack text, when it gave one.
        reason: Option<String>,
    },
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("cannot decode the kernel's reply: {0}")]
    Decode(String),
}

impl RequestError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            RequestError::Kernel { errno, .. } => Some(*errno),
            RequestError::Io(e) => e.raw_os_error(),
            RequestError::Decode(_) => None,
        }
    }
}

/// One rtnetlink socket (see the module docs).
#[derive(Debug)]
pub struct RouteSocket {
    socket: Socket,
    seq: u32,
}

impl RouteSocket {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors come with the kernel's reason and without the whole failed request.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        set_rcv_timeout(&socket, REPLY_TIMEOUT)?;
        Ok(Self { socket, seq: 0 })
    }

    /// Send `msg` with `flags` (plus `NLM_F_REQUEST`) and collect the replies: the messages of
    /// a dump, the single answer of a get, or nothing for an acknowledged change.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, RequestError> {
        let seq = self.send(msg, flags)?;
        let expects_ack = flags & NLM_F_ACK != 0;
        let mut replies = Vec::new();
        let mut received = 0usize;
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            received = received.saturating_add(datagram.len());
            if received > MAX_REPLY_BYTES {
                return Err(RequestError::Decode(format!(
                    "the replies exceed {MAX_REPLY_BYTES} bytes"
                )));
            }
            let mut offset = 0;
            while let Some(one) = next_message(&datagram, &mut offset)? {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(one)
                    .map_err(|e| RequestError::Decode(e.to_string()))?;
                if msg.header.sequence_number != seq {
                    // A late reply to an earlier request that timed out: not ours.
                    continue;
                }
                let multipart = msg.header.flags & NLM_F_MULTIPART != 0;
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => {
                            return Err(RequestError::Kernel {
                                errno: -code.get(),
                                reason: ext_ack_message(one, msg.header.flags),
                            });
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !multipart && !expects_ack {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

impl RouteSocket {
    /// Sends `msg` with `flags` (plus `NLM_F_REQUEST`) under the next sequence number, which it
    /// returns.
    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, RequestError> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut req =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = seq;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(seq)
    }
}

/// The next netlink message of `datagram` from `offset` (moved past it, to the next 4-byte
/// boundary); `None` when no whole header is left; an error for a length that does not fit.
fn next_message<'a>(
    datagram: &'a [u8],
    offset: &mut usize,
) -> Result<Option<&'a [u8]>, RequestError> {
    if *offset + NETLINK_HEADER_LEN > datagram.len() {
        return Ok(None);
    }
    let bytes = &datagram[*offset..];
    let len = NetlinkBuffer::new_checked(bytes)
        .map_err(|e| RequestError::Decode(e.to_string()))?
        .length() as usize;
    if len < NETLINK_HEADER_LEN || len > bytes.len() {
        return Err(RequestError::Decode(format!(
            "message length {len} in a {} byte datagram",
            datagram.len()
        )));
    }
    *offset += (len + 3) & !3;
    Ok(Some(&bytes[..len]))
}

impl RouteSocket {
    /// The link called `name` (`RTM_GETLINK` by name), `None` when there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkMessage>, RequestError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(m),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the namespace (`RTM_GETLINK` dump).
    pub fn links(&mut self) -> Result<Vec<LinkMessage>, RequestError> {
        self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            |r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(m),
                _ => None,
            },
        )
    }

    /// Every address of every link of the namespace, both families (`RTM_GETADDR` dump).
    pub fn addresses(&mut self) -> Result<Vec<AddressMessage>, RequestError> {
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        self.dump(request, |r| match r {
            RouteNetlinkMessage::NewAddress(m) => Some(m),
            _ => None,
        })
    }

    /// Every forwarding database entry of the namespace (`RTM_GETNEIGH` dump of `AF_BRIDGE`):
    /// the entries of bridges and their ports and those of VXLANs (`NTF_SELF`) alike.
    pub fn fdb(&mut self) -> Result<Vec<NeighbourMessage>, RequestError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        self.dump(RouteNetlinkMessage::GetNeighbour(msg), |r| match r {
            RouteNetlinkMessage::NewNeighbour(m) => Some(m),
            _ => None,
        })
    }

    /// A `NLM_F_DUMP` request: the replies `pick` keeps (the objects of the kind dumped).
    fn dump<T>(
        &mut self,
        request: RouteNetlinkMessage,
        pick: impl Fn(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, RequestError> {
        let replies = self.request(request, NLM_F_DUMP)?;
        Ok(replies.into_iter().filter_map(pick).collect())
    }

    /// A request the kernel only acknowledges (`NLM_F_ACK` plus `flags`).
    pub fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), RequestError> {
        self.request(msg, NLM_F_ACK | flags).map(drop)
    }
}

/// An `RTM_SETLINK`/`RTM_NEWLINK` body addressing the link with ifindex `index`.
pub fn link_at(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

/// The alias (`IFLA_IFALIAS`) of a link, when it has a non-empty one.
pub fn link_alias_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    })
}

/// Sets the alias of link `name` and brings it up, in one request.
pub fn set_alias_and_up(
    socket: &mut RouteSocket,
    name: &str,
    alias: &str,
) -> Result<(), RequestError> {
    let link = socket.link_by_name(name)?.ok_or(RequestError::Kernel {
        errno: libc::ENODEV,
        reason: Some(format!("no link {name:?}")),
    })?;
    let mut msg = link_at(link.header.index);
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes
        .push(LinkAttribute::IfAlias(alias.to_string()));
    socket.ack(RouteNetlinkMessage::SetLink(msg), 0)
}

fn set_rcv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: a valid socket descriptor and a properly sized timeval.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `NLMSGERR_ATTR_MSG` text of an error message, if the kernel attached one.
fn ext_ack_message(message: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // Header, errno, then the failed request: its header only when capped, else all of it.
    let request = message.get(NETLINK_HEADER_LEN + 4..)?;
    let request_len = if flags & NLM_F_CAPPED != 0 {
        NETLINK_HEADER_LEN
    } else {
        u32::from_ne_bytes(request.get(..4)?.try_into().ok()?) as usize
    };
    let mut tlvs = request.get((request_len + 3) & !3..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned()).filter(|s| !s.is_empty());
        }
        tlvs = tlvs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_message(flags: u16, tlv: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; NETLINK_HEADER_LEN];
        m.extend_from_slice(&(-22i32).to_ne_bytes());
        // The capped request: a header saying 40 bytes long.
        let mut req = vec![0u8; NETLINK_HEADER_LEN];
        req[..4].copy_from_slice(&40u32.to_ne_bytes());
        m.extend_from_slice(&req);
        m.extend_from_slice(tlv);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m[6..8].copy_from_slice(&flags.to_ne_bytes());
        m
    }

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut t = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        t.extend_from_slice(&kind.to_ne_bytes());
        t.extend_from_slice(value);
        while !t.len().is_multiple_of(4) {
            t.push(0);
        }
        t
    }

    #[test]
    fn extended_ack_text_is_read_after_a_capped_request() {
        let mut tlvs = tlv(3, &7u32.to_ne_bytes());
        tlvs.extend(tlv(NLMSGERR_ATTR_MSG, b"MTU too large\0"));
        let m = error_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &tlvs);
        assert_eq!(
            ext_ack_message(&m, NLM_F_CAPPED | NLM_F_ACK_TLVS).as_deref(),
            Some("MTU too large")
        );
    }

    #[test]
    fn no_text_without_tlvs_or_with_malformed_ones() {
        let m = error_message(NLM_F_CAPPED, &[]);
        assert_eq!(ext_ack_message(&m, NLM_F_CAPPED), None);
        let bad = error_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &[200, 0, 1, 0]);
        assert_eq!(ext_ack_message(&bad, NLM_F_CAPPED | NLM_F_ACK_TLVS), None);
        assert_eq!(ext_ack_message(&[0u8; 8], NLM_F_ACK_TLVS), None);
    }
}
