//! Tickets and passes: what a shopper's cookie says, signed with the room's
//! secret (HMAC-SHA256), so that nobody can make up a place in line or a pass.
//!
//! A value is `kind.room.epoch.a.b.c.signature`, numbers in lower-case hex:
//! a ticket (`t`) carries its number, when it was issued (Unix seconds) and
//! the first estimated wait shown (seconds, `ffffffff` for none); a pass (`p`)
//! its id, its admission number and when it was issued. The epoch is the
//! line's ([`crate::store::room::RoomLine::epoch`]): a value from before a
//! restart names places that no longer exist.

use ring::hmac;

/// What a valid cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// A place in line.
    Ticket {
        /// The ticket number (a draw before the opening).
        seq: u64,
        /// When it was issued, Unix seconds.
        issued: u64,
        /// The first estimated wait shown with it, seconds.
        eta: Option<u32>,
    },
    /// Admitted.
    Pass {
        /// The pass id.
        id: u64,
        /// The admission number (order of calling).
        number: u64,
        /// When it was issued, Unix seconds.
        issued: u64,
    },
}

/// Why a cookie was not taken: the `reason` label of
/// `ordergate_room_rejected_cookies_total`, in label order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::EnumCount, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Invalid {
    /// Not a ticket or pass at all.
    Malformed,
    /// Forged or tampered with: the signature does not match.
    BadSignature,
    /// Signed, but for another room.
    OtherRoom,
    /// Signed for this room, but its place or pass is gone (skipped after
    /// `ticket_timeout`, a pass past its session, a restart).
    Expired,
}

impl Invalid {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

const NO_ETA: u64 = 0xffff_ffff;

/// Makes the cookie value of `token` for `room`.
pub fn encode(key: &hmac::Key, room: &str, epoch: u64, token: Token) -> String {
    let body = match token {
        Token::Ticket { seq, issued, eta } => format!(
            "t.{room}.{epoch:x}.{seq:x}.{issued:x}.{:x}",
            eta.map_or(NO_ETA, u64::from)
        ),
        Token::Pass { id, number, issued } => {
            format!("p.{room}.{epoch:x}.{id:x}.{number:x}.{issued:x}")
        }
    };
    let tag = hmac::sign(key, body.as_bytes());
    let mut value = body;
    value.push('.');
    for byte in tag.as_ref() {
        value.push_str(&format!("{byte:02x}"));
    }
    value
}

/// Reads a cookie value for `room` (whose line has `epoch`).
pub fn decode(key: &hmac::Key, room: &str, epoch: u64, value: &str) -> Result<Token, Invalid> {
    // 7 fields, at most 64 characters each: anything longer is not ours.
    if value.len() > 400 || !value.is_ascii() {
        return Err(Invalid::Malformed);
    }
    let (body, tag_hex) = value.rsplit_once('.').ok_or(Invalid::Malformed)?;
    let tag = hex(tag_hex).ok_or(Invalid::Malformed)?;
    let fields: Vec<&str> = body.split('.').collect();
    let [kind, cookie_room, cookie_epoch, a, b, c] = fields.as_slice() else {
        return Err(Invalid::Malformed);
    };
    let number = |text: &str| u64::from_str_radix(text, 16).map_err(|_| Invalid::Malformed);
    let (a, b, c, cookie_epoch) = (number(a)?, number(b)?, number(c)?, number(cookie_epoch)?);
    if !matches!(*kind, "t" | "p") {
        return Err(Invalid::Malformed);
    }
    hmac::verify(key, body.as_bytes(), &tag).map_err(|_| Invalid::BadSignature)?;
    if *cookie_room != room {
        return Err(Invalid::OtherRoom);
    }
    if cookie_epoch != epoch {
        return Err(Invalid::Expired);
    }
    Ok(match *kind {
        "t" => Token::Ticket {
            seq: a,
            issued: b,
            eta: (c != NO_ETA).then(|| u32::try_from(c).unwrap_or(u32::MAX)),
        },
        _ => Token::Pass {
            id: a,
            number: b,
            issued: c,
        },
    })
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8]) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, secret)
    }

    #[test]
    fn tickets_and_passes_round_trip() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let ticket = Token::Ticket {
            seq: 42,
            issued: 1_700_000_000,
            eta: Some(17),
        };
        let value = encode(&k, "sale", 7, ticket);
        assert_eq!(decode(&k, "sale", 7, &value), Ok(ticket));
        let pass = Token::Pass {
            id: 1 << 62,
            number: 9,
            issued: 1,
        };
        assert_eq!(
            decode(&k, "sale", 7, &encode(&k, "sale", 7, pass)),
            Ok(pass)
        );
        let none = Token::Ticket {
            seq: 1,
            issued: 2,
            eta: None,
        };
        assert_eq!(
            decode(&k, "sale", 7, &encode(&k, "sale", 7, none)),
            Ok(none)
        );
    }

    #[test]
    fn forged_tampered_other_room_and_old_values_are_refused() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let value = encode(
            &k,
            "sale",
            7,
            Token::Ticket {
                seq: 42,
                issued: 1,
                eta: None,
            },
        );
        // Tampered: an earlier place.
        let tampered = value.replacen(".2a.", ".1.", 1);
        assert_ne!(tampered, value);
        assert_eq!(decode(&k, "sale", 7, &tampered), Err(Invalid::BadSignature));
        // Forged with another key.
        let other_key = key(b"another secret of at least 32 bytes!");
        assert_eq!(
            decode(&other_key, "sale", 7, &value),
            Err(Invalid::BadSignature)
        );
        // Another room with the same secret.
        assert_eq!(decode(&k, "other", 7, &value), Err(Invalid::OtherRoom));
        // Another epoch (a restart).
        assert_eq!(decode(&k, "sale", 8, &value), Err(Invalid::Expired));
        for junk in [
            "",
            "x",
            "t.sale.7.2a.1.1.zz",
            "a.b.c.d.e.f.g.h",
            "é",
            &"a".repeat(500),
        ] {
            assert_eq!(
                decode(&k, "sale", 7, junk),
                Err(Invalid::Malformed),
                "{junk}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever a client sends as its cookie, reading it never panics and
        /// never yields a token it was not given.
        #[test]
        fn any_cookie_value_is_read_without_panic(value in ".{0,500}", seq in 0u64..1000) {
            let k = key(b"0123456789abcdef0123456789abcdef");
            proptest::prop_assert!(decode(&k, "sale", 7, &value).is_err());
            // A real value with any one character changed is refused.
            let real = encode(&k, "sale", 7, Token::Ticket { seq, issued: 1, eta: Some(3) });
            let at = value.len() % real.len();
            let mut bytes = real.clone().into_bytes();
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(bytes).unwrap_or_default();
            proptest::prop_assert!(decode(&k, "sale", 7, &changed).is_err());
        }
    }
}
