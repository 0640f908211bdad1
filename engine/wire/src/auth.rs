//! Mutual authentication with a shared token: an HMAC-SHA256 challenge.
//!
//! Intended handshake (the caller drives it):
//!
//! ```text
//! source                                        destination
//!   nonce_s = new_nonce()                         nonce_d = new_nonce()
//!   Hello { role: Source, nonce_s, .. } ───────>
//!                          <─────────────────────── Hello { role: Destination, nonce_d, .. }
//!   (both check version and that each side's `authenticated` matches
//!    its own; a mismatch is an error, never a silent downgrade)
//!   Auth { mac(token, Source, nonce_d, nonce_s) } ───────>
//!                          <─────────────────────── Auth { mac(token, Destination, nonce_s, nonce_d) }
//!   verify(token, Destination, nonce_s,           verify(token, Source, nonce_d,
//!          nonce_d, mac_d)                               nonce_s, mac_s)
//! ```
//!
//! Each MAC is HMAC-SHA256(token, `b"pagehop-auth-v1"` ‖ own role (u8) ‖
//! peer nonce ‖ own nonce). Binding the role means a MAC cannot be reflected
//! back to its sender, and binding both nonces means it cannot be replayed
//! on another connection. Pass `verify` the role you expect the peer to
//! have (`own_role.peer()`), not the role its `Hello` claims.
//!
//! Both sides send their `Auth` before reading the peer's, so neither waits
//! on the other. This authenticates the peers only: the stream itself is
//! neither encrypted nor integrity-protected beyond the frame crc.

use std::io;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::msg::Role;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation for the MAC input.
const DOMAIN: &[u8] = b"pagehop-auth-v1";
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
/// Holds the keyed HMAC state rather than the token bytes, and never prints
/// its secret.
#[derive(Clone)]
pub struct Token {
    key: HmacSha256,
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
        Ok(Self {
            key,
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

fn keyed(token: &Token, role: Role, peer_nonce: &[u8; 32], own_nonce: &[u8; 32]) -> HmacSha256 {
    let mut m = token.key.clone();
    m.update(DOMAIN);
    m.update(&[role as u8]);
    m.update(peer_nonce);
    m.update(own_nonce);
    m
}

/// The MAC this side sends in its `Auth`: HMAC-SHA256(token,
/// `b"pagehop-auth-v1"` ‖ own_role ‖ peer_nonce ‖ own_nonce).
pub fn mac(token: &Token, own_role: Role, peer_nonce: &[u8; 32], own_nonce: &[u8; 32]) -> [u8; 32] {
    keyed(token, own_role, peer_nonce, own_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks the peer's `Auth` MAC in constant time. `own_nonce` is the nonce
/// this side sent, `peer_nonce` the one the peer sent, `peer_role` the role
/// the peer must have (`own_role.peer()`).
pub fn verify(
    token: &Token,
    peer_role: Role,
    own_nonce: &[u8; 32],
    peer_nonce: &[u8; 32],
    mac: &[u8; 32],
) -> Result<(), AuthError> {
    if own_nonce == peer_nonce {
        return Err(AuthError::NonceReuse);
    }
    // The peer computed mac(token, peer_role, its peer nonce = ours, its own).
    keyed(token, peer_role, own_nonce, peer_nonce)
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

    /// Runs both sides of the handshake; returns (source's verdict on the
    /// destination, destination's verdict on the source).
    fn handshake(src: &Token, dst: &Token) -> (Result<(), AuthError>, Result<(), AuthError>) {
        let nonce_s = new_nonce();
        let nonce_d = new_nonce();
        let mac_s = mac(src, Role::Source, &nonce_d, &nonce_s);
        let mac_d = mac(dst, Role::Destination, &nonce_s, &nonce_d);
        (
            verify(src, Role::Destination, &nonce_s, &nonce_d, &mac_d),
            verify(dst, Role::Source, &nonce_d, &nonce_s, &mac_s),
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
        let mac_s = mac(&t, Role::Source, &nonce_d, &nonce_s);
        // Our own MAC reflected back does not pass as the peer's.
        assert!(verify(&t, Role::Destination, &nonce_s, &nonce_d, &mac_s).is_err());
        // A MAC for another connection's nonce does not pass.
        let other = new_nonce();
        assert!(verify(&t, Role::Source, &other, &nonce_s, &mac_s).is_err());
        // Any flipped bit fails.
        for byte in 0..32 {
            let mut bad = mac_s;
            bad[byte] ^= 1;
            assert!(verify(&t, Role::Source, &nonce_d, &nonce_s, &bad).is_err());
        }
        verify(&t, Role::Source, &nonce_d, &nonce_s, &mac_s).expect("untouched");
        // A peer echoing our nonce is refused outright.
        assert!(matches!(
            verify(&t, Role::Source, &nonce_s, &nonce_s, &mac_s),
            Err(AuthError::NonceReuse)
        ));
    }

    #[test]
    fn mac_matches_reference_hmac() {
        let t = token("0123456789abcdef");
        let (peer, own) = ([1u8; 32], [2u8; 32]);
        let mut reference = HmacSha256::new_from_slice(b"0123456789abcdef").expect("key");
        let mut input = b"pagehop-auth-v1".to_vec();
        input.push(2);
        input.extend_from_slice(&peer);
        input.extend_from_slice(&own);
        reference.update(&input);
        let expected: [u8; 32] = reference.finalize().into_bytes().into();
        assert_eq!(mac(&t, Role::Destination, &peer, &own), expected);
        assert_ne!(mac(&t, Role::Source, &peer, &own), expected);
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
            mac(&from_file, Role::Source, &n, &n),
            mac(&plain, Role::Source, &n, &n)
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
