//! Mutual authentication with a shared token: an HMAC-SHA256 challenge.
//!
//! Intended handshake (the caller drives it):
//!
//! ```text
//! source                                        destination
//!   nonce_s = new_nonce()                         nonce_d = new_nonce()
//!   Hello { role: Source, nonce_s, .. } ───────>
//!                          <─────────────────────── Hello { role: Destination, nonce_d, .. }
//!   (both check version and that the peer's `protection` matches
//!    their own; a mismatch is an error, never a silent downgrade)
//!   Auth { mac(token, Source, nonce_d, nonce_s, transcript) } ───────>
//!                          <─────────────────────── Auth { mac(token, Destination, nonce_s, nonce_d, transcript) }
//!   verify(token, Destination, nonce_s,           verify(token, Source, nonce_d,
//!          nonce_d, mac_d)                               nonce_s, mac_s)
//! ```
//!
//! Each MAC is HMAC-SHA256(token, `b"pagehop-auth-v2"` ‖ own role (u8) ‖
//! peer nonce ‖ own nonce ‖ transcript), the transcript being SHA-256 of the
//! source's `Hello` payload followed by the destination's. Binding the role
//! means a MAC cannot be reflected back to its sender, binding both nonces
//! means it cannot be replayed on another connection, and binding the
//! transcript means nothing in either `Hello` (the protection asked for, the
//! capabilities) can be changed on the path. Pass `verify` the role you expect the peer to
//! have (`own_role.peer()`), not the role its `Hello` claims.
//!
//! Both sides send their `Auth` before reading the peer's, so neither waits
//! on the other. The same token also keys the frames that follow
//! ([`crate::seal`]): [`Token`] holds its HKDF extraction as well.

use std::io;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use ring::hkdf;
use sha2::{Digest, Sha256};

use super::msg::Role;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation for the MAC input.
const DOMAIN: &[u8] = b"pagehop-auth-v2";
/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// The environment variable the command line reads a token from.
pub const TOKEN_ENV: &str = "PAGEHOP_TOKEN";
/// The most a token file may hold.
pub const MAX_TOKEN_FILE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "token file {path} can be read or written by others (mode {mode:03o}): \
         `chmod 600` it"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "token file {path} belongs to uid {owner}, neither root nor this process's user: \
         someone else could change it"
    )]
    ForeignOwner { path: PathBuf, owner: u32 },
    #[error("token file {path} holds more than {max} bytes: is it the right file?")]
    TooLong { path: PathBuf, max: u64 },
    #[error("token from {origin} is empty")]
    Empty { origin: String },
    #[error("token from {origin} is {len} bytes; at least {min} are needed")]
    TooShort {
        origin: String,
        len: usize,
        min: usize,
    },
    #[error("reading random bytes for a nonce")]
    Random {
        #[source]
        source: io::Error,
    },
    #[error("peer echoed our own nonce")]
    NonceReuse,
    #[error("peer failed authentication: wrong token")]
    BadMac,
}

/// A shared secret of at least [`MIN_TOKEN_LEN`] bytes.
///
/// Holds the keyed HMAC state and the HKDF pseudorandom key derived from
/// the token rather than the token bytes, and never prints its secret.
#[derive(Clone)]
pub struct Token {
    key: HmacSha256,
    prk: hkdf::Prk,
    len: usize,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<{} bytes>)", self.len)
    }
}

impl Token {
    /// A token from raw bytes; `origin` names where they came from in errors.
    /// One trailing newline (`\n` or `\r\n`) is dropped.
    pub fn new(bytes: &[u8], origin: &str) -> Result<Self, AuthError> {
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.is_empty() {
            return Err(AuthError::Empty {
                origin: origin.to_owned(),
            });
        }
        if bytes.len() < MIN_TOKEN_LEN {
            return Err(AuthError::TooShort {
                origin: origin.to_owned(),
                len: bytes.len(),
                min: MIN_TOKEN_LEN,
            });
        }
        // HMAC takes keys of any length (longer ones are hashed, shorter
        // ones padded), so this never fails; map it anyway rather than
        // unwrap.
        let key = HmacSha256::new_from_slice(bytes).map_err(|_| AuthError::TooShort {
            origin: origin.to_owned(),
            len: bytes.len(),
            min: MIN_TOKEN_LEN,
        })?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, crate::seal::KDF_LABEL).extract(bytes);
        Ok(Self {
            key,
            prk,
            len: bytes.len(),
        })
    }

    /// Reads a token file (its whole contents, minus one trailing newline).
    /// Like an ssh key, it must be private: no access for group or others,
    /// owned by root or by this process's user (a symlink to such a file,
    /// as Kubernetes mounts secrets, is fine).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let path = path.as_ref();
        let read = |source| AuthError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        // /proc/self belongs to the process's effective user.
        let me = std::fs::metadata("/proc/self").map_err(read)?.uid();
        if meta.uid() != 0 && meta.uid() != me {
            return Err(AuthError::ForeignOwner {
                path: path.to_owned(),
                owner: meta.uid(),
            });
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AuthError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_TOKEN_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_TOKEN_FILE {
            return Err(AuthError::TooLong {
                path: path.to_owned(),
                max: MAX_TOKEN_FILE,
            });
        }
        Self::new(&bytes, &format!("file {}", path.display()))
    }

    /// The token in environment variable `var`, or `None` if it is unset.
    /// Set but empty or short is an error, not "no token".
    pub fn from_env(var: &str) -> Result<Option<Self>, AuthError> {
        use std::os::unix::ffi::OsStrExt;
        match std::env::var_os(var) {
            None => Ok(None),
            Some(value) => Self::new(value.as_bytes(), &format!("${var}")).map(Some),
        }
    }

    /// The key material frame keys are expanded from ([`crate::seal`]).
    pub fn prk(&self) -> &hkdf::Prk {
        &self.prk
    }

    /// Token length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a token has at least [`MIN_TOKEN_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A fresh 32-byte nonce from the OS random source.
pub fn try_new_nonce() -> Result<[u8; 32], AuthError> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| AuthError::Random {
        source: match e.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::other(e.to_string()),
        },
    })?;
    Ok(nonce)
}

/// A fresh 32-byte nonce from the OS random source.
///
/// # Panics
///
/// If the kernel's random source fails (getrandom(2) does not fail for 32
/// bytes on Linux once the pool is seeded); use [`try_new_nonce`] to handle
/// that as an error.
pub fn new_nonce() -> [u8; 32] {
    match try_new_nonce() {
        Ok(nonce) => nonce,
        Err(e) => panic!("{e}: {:?}", std::error::Error::source(&e)),
    }
}

/// SHA-256 of the source's `Hello` payload followed by the destination's.
pub fn transcript(source_hello: &[u8], destination_hello: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(source_hello);
    h.update(destination_hello);
    h.finalize().into()
}

/// What a MAC covers besides the token and the role.
pub struct Challenge<'a> {
    pub peer_nonce: &'a [u8; 32],
    pub own_nonce: &'a [u8; 32],
    pub transcript: &'a [u8; 32],
}

fn keyed(token: &Token, role: Role, c: &Challenge<'_>) -> HmacSha256 {
    let mut m = token.key.clone();
    m.update(DOMAIN);
    m.update(&[role as u8]);
    m.update(c.peer_nonce);
    m.update(c.own_nonce);
    m.update(c.transcript);
    m
}

/// The MAC this side sends in its `Auth`: HMAC-SHA256(token,
/// `b"pagehop-auth-v2"` ‖ own_role ‖ peer_nonce ‖ own_nonce ‖ transcript).
pub fn mac(token: &Token, own_role: Role, c: &Challenge<'_>) -> [u8; 32] {
    keyed(token, own_role, c).finalize().into_bytes().into()
}

/// Checks the peer's `Auth` MAC in constant time. `peer_role` is the role
/// the peer must have (`own_role.peer()`); `c` is as this side sees it
/// (`own_nonce` the nonce this side sent).
pub fn verify(
    token: &Token,
    peer_role: Role,
    c: &Challenge<'_>,
    mac: &[u8; 32],
) -> Result<(), AuthError> {
    if c.own_nonce == c.peer_nonce {
        return Err(AuthError::NonceReuse);
    }
    // The peer computed its MAC with the nonces the other way round.
    let theirs = Challenge {
        peer_nonce: c.own_nonce,
        own_nonce: c.peer_nonce,
        transcript: c.transcript,
    };
    keyed(token, peer_role, &theirs)
        .verify_slice(mac)
        .map_err(|_| AuthError::BadMac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("pagehop-token-{}", std::process::id()));
        std::fs::write(&path, "a-token-of-enough-length").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Token::from_file(&path).expect_err("mode 644");
        assert!(
            matches!(err, AuthError::Exposed { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Token::from_file(&path).expect("mode 600").len(), 24);
        std::fs::write(&path, vec![b'x'; MAX_TOKEN_FILE as usize + 1]).unwrap();
        assert!(matches!(
            Token::from_file(&path),
            Err(AuthError::TooLong { .. })
        ));
        std::fs::remove_file(&path).unwrap();
    }

    fn token(s: &str) -> Token {
        Token::new(s.as_bytes(), "test").expect("token")
    }

    const TRANSCRIPT: [u8; 32] = [5; 32];

    /// `mac` over a fixed transcript.
    fn m(token: &Token, role: Role, peer: &[u8; 32], own: &[u8; 32]) -> [u8; 32] {
        mac(
            token,
            role,
            &Challenge {
                peer_nonce: peer,
                own_nonce: own,
                transcript: &TRANSCRIPT,
            },
        )
    }

    /// `verify` over a fixed transcript.
    fn v(
        token: &Token,
        peer_role: Role,
        own: &[u8; 32],
        peer: &[u8; 32],
        mac: &[u8; 32],
    ) -> Result<(), AuthError> {
        verify(
            token,
            peer_role,
            &Challenge {
                peer_nonce: peer,
                own_nonce: own,
                transcript: &TRANSCRIPT,
            },
            mac,
        )
    }

    #[test]
    fn a_changed_hello_fails_the_mac() {
        let t = token("0123456789abcdef");
        let (ns, nd) = (new_nonce(), new_nonce());
        let sent = m(&t, Role::Source, &nd, &ns);
        let other = transcript(b"source hello", b"destination hello, altered");
        let seen = Challenge {
            peer_nonce: &ns,
            own_nonce: &nd,
            transcript: &other,
        };
        assert!(matches!(
            verify(&t, Role::Source, &seen, &sent),
            Err(AuthError::BadMac)
        ));
        v(&t, Role::Source, &nd, &ns, &sent).expect("the transcript the source saw");
    }

    /// Runs both sides of the handshake; returns (source's verdict on the
    /// destination, destination's verdict on the source).
    fn handshake(src: &Token, dst: &Token) -> (Result<(), AuthError>, Result<(), AuthError>) {
        let nonce_s = new_nonce();
        let nonce_d = new_nonce();
        let mac_s = m(src, Role::Source, &nonce_d, &nonce_s);
        let mac_d = m(dst, Role::Destination, &nonce_s, &nonce_d);
        (
            v(src, Role::Destination, &nonce_s, &nonce_d, &mac_d),
            v(dst, Role::Source, &nonce_d, &nonce_s, &mac_s),
        )
    }

    #[test]
    fn right_token_passes() {
        let t = token("correct horse battery staple");
        let (a, b) = handshake(&t, &t.clone());
        a.expect("source accepts destination");
        b.expect("destination accepts source");
    }

    #[test]
    fn wrong_token_fails_both_ways() {
        let (a, b) = handshake(
            &token("correct horse battery staple"),
            &token("correct horse battery stapler"),
        );
        for r in [a, b] {
            let e = r.expect_err("wrong token");
            assert!(matches!(e, AuthError::BadMac));
            assert_eq!(e.to_string(), "peer failed authentication: wrong token");
        }
    }

    #[test]
    fn reflection_replay_and_tampering_fail() {
        let t = token("0123456789abcdef");
        let nonce_s = new_nonce();
        let nonce_d = new_nonce();
        let mac_s = m(&t, Role::Source, &nonce_d, &nonce_s);
        // Our own MAC reflected back does not pass as the peer's.
        assert!(v(&t, Role::Destination, &nonce_s, &nonce_d, &mac_s).is_err());
        // A MAC for another connection's nonce does not pass.
        let other = new_nonce();
        assert!(v(&t, Role::Source, &other, &nonce_s, &mac_s).is_err());
        // Any flipped bit fails.
        for byte in 0..32 {
            let mut bad = mac_s;
            bad[byte] ^= 1;
            assert!(v(&t, Role::Source, &nonce_d, &nonce_s, &bad).is_err());
        }
        v(&t, Role::Source, &nonce_d, &nonce_s, &mac_s).expect("untouched");
        // A peer echoing our nonce is refused outright.
        assert!(matches!(
            v(&t, Role::Source, &nonce_s, &nonce_s, &mac_s),
            Err(AuthError::NonceReuse)
        ));
    }

    #[test]
    fn mac_matches_reference_hmac() {
        let t = token("0123456789abcdef");
        let (peer, own) = ([1u8; 32], [2u8; 32]);
        let mut reference = HmacSha256::new_from_slice(b"0123456789abcdef").expect("key");
        let mut input = b"pagehop-auth-v2".to_vec();
        input.push(2);
        input.extend_from_slice(&peer);
        input.extend_from_slice(&own);
        input.extend_from_slice(&TRANSCRIPT);
        reference.update(&input);
        let expected: [u8; 32] = reference.finalize().into_bytes().into();
        assert_eq!(m(&t, Role::Destination, &peer, &own), expected);
        assert_ne!(m(&t, Role::Source, &peer, &own), expected);
    }

    #[test]
    fn token_loading() {
        let dir = std::env::temp_dir().join(format!("pagehop-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("token");
        std::fs::write(&file, "").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");

        std::fs::write(&file, "0123456789abcdef\n").expect("write");
        let from_file = Token::from_file(&file).expect("token file");
        assert_eq!(from_file.len(), 16);
        // The newline is not part of the key.
        let plain = token("0123456789abcdef");
        let n = [9u8; 32];
        assert_eq!(
            m(&from_file, Role::Source, &n, &n),
            m(&plain, Role::Source, &n, &n)
        );
        std::fs::write(&file, "0123456789abcdef\r\n").expect("write");
        assert_eq!(Token::from_file(&file).expect("crlf").len(), 16);

        for (contents, short) in [("", false), ("\n", false), ("short\n", true)] {
            std::fs::write(&file, contents).expect("write");
            let e = Token::from_file(&file).expect_err(contents);
            match (short, &e) {
                (false, AuthError::Empty { origin })
                | (true, AuthError::TooShort { origin, .. }) => {
                    assert!(origin.contains("token"), "{origin}");
                }
                _ => panic!("{contents:?}: {e:?}"),
            }
        }
        let missing = Token::from_file(dir.join("missing")).expect_err("missing");
        assert!(matches!(missing, AuthError::Read { .. }));
        std::fs::remove_dir_all(&dir).expect("cleanup");

        assert!(format!("{plain:?}").contains("16 bytes"));
        assert!(!format!("{plain:?}").contains("0123"));
    }

    #[test]
    fn token_from_env() {
        // A variable name no other test uses, so the process environment is
        // not raced.
        assert!(
            Token::from_env("PAGEHOP_TEST_TOKEN_UNSET_7f3a")
                .expect("unset")
                .is_none()
        );
        let var = "PAGEHOP_TEST_TOKEN_SET_7f3a";
        // Setting variables is unsafe in edition 2024 (other threads may read
        // the environment); exercise the byte handling instead.
        assert!(matches!(
            Token::new(b"", &format!("${var}")),
            Err(AuthError::Empty { origin }) if origin == format!("${var}")
        ));
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(new_nonce(), new_nonce());
    }
}
