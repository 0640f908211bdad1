//! Sealed frames: every frame after the handshake encrypted and
//! authenticated with AES-256-GCM (ring), under keys that belong to one
//! connection and one direction.
//!
//! Keys: HKDF-SHA256 with the token as input keying material (extracted once
//! per token, see [`crate::auth::Token`]) and, per connection, expanded with
//! an info string that names the direction and holds both handshake nonces
//! and the hash of both `Hello`s:
//!
//! ```text
//! prk = HKDF-Extract(salt = "pagehop-wire-v3", ikm = token)
//! key = HKDF-Expand(prk, "pagehop-wire-v3 " ‖ direction ‖ nonce_source
//!                        ‖ nonce_destination ‖ transcript, 32)
//!   direction: "source->destination" or "destination->source"
//!   transcript: SHA-256(source Hello payload ‖ destination Hello payload)
//! ```
//!
//! Both nonces are fresh on every connection, so every connection (every
//! lane of every session and epoch) has its own pair of keys: a frame moved
//! to another lane, another session or a recording replayed later does not
//! open.
//!
//! A sealed frame keeps the plain frame's header with `len` counting the
//! ciphertext and its 16-byte tag, and `crc32` zero; the whole 16-byte
//! header is the AEAD's associated data. The 96-bit AEAD nonce is the
//! frame's sequence number in its direction (4 zero bytes, then the number
//! as a big-endian u64), counted from 0 by both ends and never sent: a
//! dropped, replayed or reordered frame opens under the wrong nonce and is
//! refused, and so is everything after it (the connection is then useless,
//! as it should be).
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, Tag, UnboundKey};
use ring::hkdf;

/// Bytes a sealed frame carries after its ciphertext.
pub const TAG_LEN: usize = 16;
/// The salt of the token's HKDF extraction and the prefix of every key's info.
pub(crate) const KDF_LABEL: &[u8] = b"pagehop-wire-v3";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "frame {seq} of this connection failed authentication: it was altered, replayed, \
         reordered or sealed for another connection"
    )]
    Forged { seq: u64 },
    #[error("sealed frame of {len} bytes is shorter than its {TAG_LEN}-byte tag")]
    NoTag { len: usize },
    #[error("the connection's {dir} sequence numbers are used up")]
    Exhausted { dir: &'static str },
}

/// Which way a key protects frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SourceToDestination,
    DestinationToSource,
}

impl Direction {
    fn label(self) -> &'static [u8] {
        match self {
            Direction::SourceToDestination => b"source->destination",
            Direction::DestinationToSource => b"destination->source",
        }
    }
}

/// What one connection's handshake established: both nonces and the hash
/// of both `Hello`s.
pub struct Handshake<'a> {
    pub source_nonce: &'a [u8; 32],
    pub destination_nonce: &'a [u8; 32],
    pub transcript: &'a [u8; 32],
}

/// The key of one direction of one connection.
fn derive(prk: &hkdf::Prk, dir: Direction, hs: &Handshake<'_>) -> LessSafeKey {
    let info: [&[u8]; 6] = [
        KDF_LABEL,
        b" ",
        dir.label(),
        hs.source_nonce,
        hs.destination_nonce,
        hs.transcript,
    ];
    // `expand` fails only for an output longer than 255 hash lengths, and
    // `UnboundKey::from` takes exactly the algorithm's key length.
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// The nonce of frame `seq`.
fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[NONCE_LEN - 8..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals the frames one end sends.
pub struct SealingKey {
    key: LessSafeKey,
    seq: u64,
}

/// Opens the frames one end receives.
pub struct OpeningKey {
    key: LessSafeKey,
    seq: u64,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey(seq {})", self.seq)
    }
}

impl std::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpeningKey(seq {})", self.seq)
    }
}

/// The sending and the receiving key of one end of a connection.
pub fn connection_keys(
    prk: &hkdf::Prk,
    sends: Direction,
    hs: &Handshake<'_>,
) -> (SealingKey, OpeningKey) {
    let receives = match sends {
        Direction::SourceToDestination => Direction::DestinationToSource,
        Direction::DestinationToSource => Direction::SourceToDestination,
    };
    (
        SealingKey {
            key: derive(prk, sends, hs),
            seq: 0,
        },
        OpeningKey {
            key: derive(prk, receives, hs),
            seq: 0,
        },
    )
}

impl SealingKey {
    /// Encrypts `payload` in place as the next frame, `header` its
    /// associated data; returns the tag to send after it.
    pub fn seal(&mut self, header: &[u8], payload: &mut [u8]) -> Result<[u8; TAG_LEN], SealError> {
        let seq = self.seq;
        self.seq = seq
            .checked_add(1)
            .ok_or(SealError::Exhausted { dir: "sending" })?;
        let tag: Tag = self
            .key
            .seal_in_place_separate_tag(nonce(seq), Aad::from(header), payload)
            // ring refuses only inputs longer than GCM's 64 GiB limit.
            .map_err(|_| SealError::Exhausted { dir: "sending" })?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

impl OpeningKey {
    /// Checks and decrypts the next frame in place: `sealed` is its
    /// ciphertext followed by the tag. Returns the plaintext's length.
    pub fn open(&mut self, header: &[u8], sealed: &mut [u8]) -> Result<usize, SealError> {
        let seq = self.seq;
        if sealed.len() < TAG_LEN {
            return Err(SealError::NoTag { len: sealed.len() });
        }
        let plain = self
            .key
            .open_in_place(nonce(seq), Aad::from(header), sealed)
            .map_err(|_| SealError::Forged { seq })?
            .len();
        self.seq = seq
            .checked_add(1)
            .ok_or(SealError::Exhausted { dir: "receiving" })?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prk(token: &[u8]) -> hkdf::Prk {
        hkdf::Salt::new(hkdf::HKDF_SHA256, KDF_LABEL).extract(token)
    }

    fn pair(
        token: &[u8],
        ns: [u8; 32],
        nd: [u8; 32],
    ) -> ((SealingKey, OpeningKey), (SealingKey, OpeningKey)) {
        let t = [7u8; 32];
        let hs = Handshake {
            source_nonce: &ns,
            destination_nonce: &nd,
            transcript: &t,
        };
        let p = prk(token);
        (
            connection_keys(&p, Direction::SourceToDestination, &hs),
            connection_keys(&p, Direction::DestinationToSource, &hs),
        )
    }

    fn sealed(key: &mut SealingKey, header: &[u8], text: &[u8]) -> Vec<u8> {
        let mut buf = text.to_vec();
        let tag = key.seal(header, &mut buf).expect("seal");
        buf.extend_from_slice(&tag);
        buf
    }

    #[test]
    fn frames_open_in_order_and_only_in_order() {
        let ((mut s_out, _), (_, mut d_in)) = pair(b"0123456789abcdef", [1; 32], [2; 32]);
        let h = b"header-bytes";
        let f0 = sealed(&mut s_out, h, b"first");
        let f1 = sealed(&mut s_out, h, b"second");
        assert_ne!(&f0[..5], b"first", "encrypted");
        // f1 before f0: refused.
        assert!(matches!(
            d_in.open(h, &mut f1.clone()),
            Err(SealError::Forged { seq: 0 })
        ));
        let mut b = f0.clone();
        assert_eq!(d_in.open(h, &mut b).expect("f0"), 5);
        assert_eq!(&b[..5], b"first");
        // f0 replayed: refused.
        assert!(d_in.open(h, &mut f0.clone()).is_err());
        let mut b = f1.clone();
        assert_eq!(d_in.open(h, &mut b).expect("f1"), 6);
    }

    #[test]
    fn any_flipped_bit_or_header_change_is_refused() {
        let ((mut s_out, _), _) = pair(b"0123456789abcdef", [1; 32], [2; 32]);
        let h = b"header-bytes";
        let f = sealed(&mut s_out, h, b"some page data");
        for i in 0..f.len() {
            let ((_, _), (_, mut d_in)) = pair(b"0123456789abcdef", [1; 32], [2; 32]);
            let mut bad = f.clone();
            bad[i] ^= 0x10;
            assert!(d_in.open(h, &mut bad).is_err(), "byte {i}");
        }
        let ((_, _), (_, mut d_in)) = pair(b"0123456789abcdef", [1; 32], [2; 32]);
        assert!(d_in.open(b"header-bytez", &mut f.clone()).is_err());
        assert!(matches!(
            d_in.open(h, &mut [0u8; 3]),
            Err(SealError::NoTag { len: 3 })
        ));
    }

    #[test]
    fn keys_differ_by_direction_token_and_connection() {
        let h = b"h";
        let ((mut s_out, mut s_in), (mut d_out, _)) = pair(b"0123456789abcdef", [1; 32], [2; 32]);
        // Reflection: the source's own frame does not open as the destination's.
        let own = sealed(&mut s_out, h, b"x");
        assert!(s_in.open(h, &mut own.clone()).is_err());
        let theirs = sealed(&mut d_out, h, b"x");
        assert!(s_in.open(h, &mut theirs.clone()).is_ok());
        // Another token or another connection's nonces: refused.
        for ((_, _), (_, mut d_in)) in [
            pair(b"0123456789abcdeF", [1; 32], [2; 32]),
            pair(b"0123456789abcdef", [3; 32], [2; 32]),
            pair(b"0123456789abcdef", [1; 32], [3; 32]),
        ] {
            assert!(d_in.open(h, &mut own.clone()).is_err());
        }
    }
}
