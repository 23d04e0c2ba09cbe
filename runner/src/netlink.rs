//! Brings the loopback interface up in a fresh network namespace, with one `RTM_NEWLINK`
//! rtnetlink request (what `ip link set lo up` sends); no `ip` binary is needed or trusted.

use std::io;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const IFF_UP: u32 = 0x1;
const NLMSG_HEADER_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// `ip link set lo up`.
pub(crate) fn loopback_up() -> io::Result<()> {
    let socket = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        // NETLINK_ROUTE is protocol 0, the default.
        None,
    )?;
    let probe = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let index = rustix::net::netdevice::name_to_index(&probe, "lo")?;
    let request = set_link_up_request(index, 1);
    rustix::net::sendto(
        &socket,
        &request,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut reply = [0u8; 1024];
    let (len, _) = rustix::net::recv(&socket, &mut reply, RecvFlags::empty())?;
    ack_result(reply.get(..len).unwrap_or_default())
}

/// `nlmsghdr` + `ifinfomsg` asking to set `IFF_UP` on interface `index`.
fn set_link_up_request(index: u32, sequence: u32) -> Vec<u8> {
    let len = (NLMSG_HEADER_LEN + IFINFOMSG_LEN) as u32;
    let mut message = Vec::with_capacity(len as usize);
    message.extend_from_slice(&len.to_ne_bytes());
    message.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    message.extend_from_slice(&sequence.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    message.push(0); // ifi_family: AF_UNSPEC
    message.push(0); // padding
    message.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    message.extend_from_slice(&index.to_ne_bytes()); // ifi_index
    message.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    message.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change: only this flag
    message
}

/// The errno in an `NLMSG_ERROR` acknowledgement (0 = success).
fn ack_result(reply: &[u8]) -> io::Result<()> {
    let field = |range: std::ops::Range<usize>| reply.get(range).map(<[u8]>::to_vec);
    let kind = field(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let error = field(16..20).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (kind, error) {
        (Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (Some(NLMSG_ERROR), Some(errno)) => Err(io::Error::from_raw_os_error(-errno)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected rtnetlink reply to RTM_NEWLINK",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_the_kernel_structs() {
        let message = set_link_up_request(1, 7);
        assert_eq!(message.len(), 32);
        assert_eq!(&message[..4], &32u32.to_ne_bytes());
        assert_eq!(&message[4..6], &RTM_NEWLINK.to_ne_bytes());
        assert_eq!(&message[20..24], &1u32.to_ne_bytes());
        assert_eq!(&message[24..28], &IFF_UP.to_ne_bytes());
    }

    #[test]
    fn acknowledgement_errno_is_reported() {
        let mut reply = vec![0u8; 36];
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(ack_result(&reply).is_ok());
        reply[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(ack_result(&reply).unwrap_err().raw_os_error(), Some(1));
        assert!(ack_result(&reply[..10]).is_err());
    }
}
