//! The PROXY protocol header (versions 1 and 2, as HAProxy specifies them)
//! that an L4 balancer sends first on each connection to name the client.
//!
//! The header is read exactly — byte by byte for the text form, by its
//! declared length for the binary one — so the request that follows stays
//! in the stream for HTTP (or TLS) to read. Its size is bounded: 107 bytes
//! for version 1 and [`MAX_V2_LENGTH`] of addresses and TLVs for version 2.
//! Whether the header is believed is not decided here: `accept` takes it only
//! from `server.trusted_proxies`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::ProxyProtocol;

/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest version 1 header, `\r\n` included (the specification's bound).
const V1_MAX: usize = 107;
/// Most bytes of addresses and TLVs taken after a version 2 header's first
/// 16 (a cloud balancer's TLVs are a few hundred bytes at most).
pub const MAX_V2_LENGTH: usize = 1024;

/// A header that does not follow the protocol: why, or nothing when the
/// connection closed before its first byte (see [`Malformed::is_empty`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl Malformed {
    /// The connection closed before sending anything (a TCP health check).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn malformed<T>(why: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(why.into()))
}

/// Reads the header `expect`ed (`Off` reads nothing) and returns the client's
/// address it names: `None` for a header that names none (version 1
/// `UNKNOWN`, version 2 `LOCAL` — a balancer's own health check — or a
/// family other than TCP over IPv4/IPv6).
pub async fn read_header<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    expect: ProxyProtocol,
) -> Result<Option<SocketAddr>, Malformed> {
    if expect == ProxyProtocol::Off {
        return Ok(None);
    }
    let mut start = [0u8; 5];
    // A connection closed before its first byte is a balancer's TCP check,
    // not a bad header.
    match reader.read(&mut start[..1]).await {
        Ok(1) => {}
        _ => return Err(Malformed(String::new())),
    }
    read_exact(reader, &mut start[1..]).await?;
    let v1 = &start == b"PROXY";
    let v2 = start == V2_SIGNATURE[..5];
    match expect {
        ProxyProtocol::V1 | ProxyProtocol::Auto if v1 => read_v1(reader).await,
        ProxyProtocol::V2 | ProxyProtocol::Auto if v2 => read_v2(reader).await,
        _ => malformed(format!(
            "expected a PROXY protocol {} header, got {:?}",
            match expect {
                ProxyProtocol::V1 => "v1",
                ProxyProtocol::V2 => "v2",
                _ => "v1 or v2",
            },
            String::from_utf8_lossy(&start)
        )),
    }
}

async fn read_exact<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    buffer: &mut [u8],
) -> Result<(), Malformed> {
    reader
        .read_exact(buffer)
        .await
        .map(drop)
        .or_else(|e| malformed(format!("the connection ended in the PROXY header: {e}")))
}

/// The rest of a version 1 header, after `PROXY`.
async fn read_v1<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
) -> Result<Option<SocketAddr>, Malformed> {
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(b"PROXY");
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return malformed("a PROXY v1 header longer than 107 bytes");
        }
        read_exact(reader, &mut byte).await?;
        line.push(byte[0]);
    }
    parse_v1(&line[..line.len() - 2])
}

/// A version 1 line without its `\r\n`.
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, Malformed> {
    let Ok(line) = std::str::from_utf8(line) else {
        return malformed("a PROXY v1 header that is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family @ ("TCP4" | "TCP6"), source, _destination, port, _destination_port] => {
            let ip: IpAddr = source
                .parse()
                .or_else(|_| malformed(format!("{source:?} is not an address")))?;
            if (*family == "TCP4") != ip.is_ipv4() {
                return malformed(format!("{source:?} is not a {family} address"));
            }
            let port: u16 = port
                .parse()
                .or_else(|_| malformed(format!("{port:?} is not a port")))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => malformed(format!("{line:?} is not a PROXY v1 header")),
    }
}

/// The rest of a version 2 header, after the signature's first 5 bytes.
async fn read_v2<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
) -> Result<Option<SocketAddr>, Malformed> {
    let mut rest = [0u8; 11];
    read_exact(reader, &mut rest).await?;
    if rest[..7] != V2_SIGNATURE[5..] {
        return malformed("a PROXY v2 header with a wrong signature");
    }
    let (version_command, family, length) = (rest[7], rest[8], [rest[9], rest[10]]);
    let length = usize::from(u16::from_be_bytes(length));
    if version_command >> 4 != 2 {
        return malformed(format!("PROXY header version {}", version_command >> 4));
    }
    if length > MAX_V2_LENGTH {
        return malformed(format!(
            "a PROXY v2 header of {length} bytes, over {MAX_V2_LENGTH}"
        ));
    }
    let mut body = vec![0u8; length];
    read_exact(reader, &mut body).await?;
    match version_command & 0x0f {
        0 => Ok(None),
        1 => parse_v2_addresses(family, &body),
        command => malformed(format!("PROXY v2 command {command}")),
    }
}

/// The source address of a version 2 `PROXY` command's address block.
fn parse_v2_addresses(family: u8, body: &[u8]) -> Result<Option<SocketAddr>, Malformed> {
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(8))))
        }
        // TCP over IPv6.
        0x21 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let ip = Ipv6Addr::from(octets);
            Ok(Some(SocketAddr::new(IpAddr::V6(ip), port(32))))
        }
        0x11 | 0x21 => malformed("a PROXY v2 address block too short for its family"),
        // UNSPEC, UDP, UNIX: no client address to take.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(
        bytes: &[u8],
        expect: ProxyProtocol,
    ) -> (Result<Option<SocketAddr>, Malformed>, Vec<u8>) {
        let mut reader = bytes;
        let header = read_header(&mut reader, expect).await;
        (header, reader.to_vec())
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[tokio::test]
    async fn version_1_names_the_client_and_leaves_the_request() {
        let bytes = b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 80\r\nGET / HTTP/1.1\r\n";
        for expect in [ProxyProtocol::V1, ProxyProtocol::Auto] {
            let (header, rest) = read(bytes, expect).await;
            assert_eq!(header, Ok(Some("203.0.113.9:51000".parse().expect("addr"))));
            assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        }
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 443 8443\r\n";
        assert_eq!(
            read(v6, ProxyProtocol::V1).await.0,
            Ok(Some("[2001:db8::7]:443".parse().expect("addr")))
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(read(unknown, ProxyProtocol::V1).await.0, Ok(None));
    }

    #[tokio::test]
    async fn version_2_names_the_client_skips_tlvs_and_local_names_none() {
        let mut body = vec![198, 51, 100, 4, 10, 0, 0, 1, 0xC3, 0x50, 0, 80];
        body.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']); // a TLV
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend_from_slice(b"GET /");
        for expect in [ProxyProtocol::V2, ProxyProtocol::Auto] {
            let (header, rest) = read(&bytes, expect).await;
            assert_eq!(
                header,
                Ok(Some("198.51.100.4:50000".parse().expect("addr")))
            );
            assert_eq!(rest, b"GET /");
        }
        let mut v6 = vec![0u8; 36];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 9;
        v6[32] = 1;
        v6[33] = 0;
        assert_eq!(
            read(&v2(1, 0x21, &v6), ProxyProtocol::V2).await.0,
            Ok(Some("[2001::9]:256".parse().expect("addr")))
        );
        assert_eq!(read(&v2(0, 0x00, &[]), ProxyProtocol::V2).await.0, Ok(None));
    }

    #[tokio::test]
    async fn anything_else_is_malformed() {
        let cases: Vec<(Vec<u8>, ProxyProtocol)> = vec![
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), ProxyProtocol::Auto),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                ProxyProtocol::V2,
            ),
            (v2(1, 0x11, &[0; 12]), ProxyProtocol::V1),
            (
                b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n".to_vec(),
                ProxyProtocol::V1,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n".to_vec(),
                ProxyProtocol::V1,
            ),
            (
                [b"PROXY ".as_slice(), &[b'x'; 200]].concat(),
                ProxyProtocol::V1,
            ),
            (b"PROXY TCP4 1.2.3.4".to_vec(), ProxyProtocol::V1),
            (v2(1, 0x11, &[0; 4]), ProxyProtocol::V2),
            (v2(1, 0x11, &vec![0; MAX_V2_LENGTH + 1]), ProxyProtocol::V2),
        ];
        for (bytes, expect) in cases {
            let (header, _) = read(&bytes, expect).await;
            assert!(
                header.as_ref().is_err_and(|e| !e.is_empty()),
                "{:?}: {header:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let (closed, _) = read(b"", ProxyProtocol::Auto).await;
        assert!(closed.is_err_and(|e| e.is_empty()), "closed before a byte");
    }
}
