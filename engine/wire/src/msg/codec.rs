//! How messages become bytes and back.
//!
//! A fixed run of fields is a [`Wire`] struct: `#[repr(C)]`, built from
//! single bytes, byte arrays and zerocopy's little-endian integers, so that
//! its memory is its wire layout (no padding, alignment 1). Encoding appends
//! its bytes; decoding is one checked cast of the payload's next bytes.
//! Strings, vectors and counts go through the length-checked [`Cursor`].
//!
//! [`fixed_message!`] gives a message that is one wire struct its `encode`,
//! `decode` and [`Message`](super::Message) impl; [`message!`] gives the
//! trait impl to a message with hand-written `encode` and `decode`.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{Lane, Message, MsgError, Protection, Role};
use crate::frame::FrameKind;

/// A fixed-layout struct on the wire.
pub(super) trait Wire: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned {
    /// Each field's name, offset and size, in wire order, to name the first
    /// field that a payload too short for the struct does not hold.
    const FIELDS: &'static [(&'static str, usize, usize)];
}

/// Declares a [`Wire`] struct of `$size` bytes (checked at compile time).
macro_rules! wire_struct {
    (
        $(#[$attr:meta])*
        struct $name:ident ($size:literal bytes) { $($field:ident: $ty:ty,)+ }
    ) => {
        $(#[$attr])*
        #[repr(C)]
        #[derive(
            zerocopy::FromBytes,
            zerocopy::IntoBytes,
            zerocopy::KnownLayout,
            zerocopy::Immutable,
            zerocopy::Unaligned,
        )]
        pub(super) struct $name {
            $($field: $ty,)+
        }

        const _: () = assert!(size_of::<$name>() == $size);

        impl $crate::msg::codec::Wire for $name {
            const FIELDS: &'static [(&'static str, usize, usize)] = &[$((
                stringify!($field),
                std::mem::offset_of!($name, $field),
                size_of::<$ty>(),
            ),)+];
        }
    };
}
pub(super) use wire_struct;

/// `Message` for a type with inherent `encode` and `decode`.
macro_rules! message {
    ($ty:ty, $kind:expr) => {
        impl $crate::msg::Message for $ty {
            const KIND: $crate::frame::FrameKind = $kind;

            fn encode(&self, out: &mut Vec<u8>) {
                <$ty>::encode(self, out)
            }

            fn decode(payload: &[u8]) -> Result<Self, $crate::msg::MsgError> {
                <$ty>::decode(payload)
            }
        }
    };
}
pub(super) use message;

/// A message that is one [`Wire`] struct.
pub(super) trait Fixed: Message {
    type Wire: Wire;

    fn to_wire(&self) -> Self::Wire;

    /// Validates the fields; `msg` names the message in errors.
    fn from_wire(wire: &Self::Wire, msg: &'static str) -> Result<Self, MsgError>;
}

pub(super) fn encode_fixed<M: Fixed>(m: &M, out: &mut Vec<u8>) {
    put(out, &m.to_wire());
}

/// Casts the payload to `M::Wire` (refusing a short one), validates it, then
/// refuses bytes after it.
pub(super) fn decode_fixed<M: Fixed>(payload: &[u8]) -> Result<M, MsgError> {
    Cursor::whole(M::KIND, payload, |c| M::from_wire(c.fixed()?, c.msg))
}

/// Gives message `$msg` its inherent `encode` and `decode` (documented with
/// `$attr`) and its [`Message`] impl, through its [`Fixed`] impl.
///
/// With a field list, also declares wire struct `$wire` and a [`Fixed`] impl
/// that carries each field of `$msg` in the wire field of the same name (see
/// [`Field`]), checked in wire order, then passes the message to `$check`.
macro_rules! fixed_message {
    (
        $(#[$attr:meta])*
        $msg:ident ($kind:expr) as $wire:ident ($size:literal bytes) {
            $($field:ident: $ty:ty,)+
        }
        $(then $check:path)?
    ) => {
        $crate::msg::codec::wire_struct! {
            struct $wire ($size bytes) { $($field: $ty,)+ }
        }

        impl $crate::msg::codec::Fixed for $msg {
            type Wire = $wire;

            fn to_wire(&self) -> $wire {
                use $crate::msg::codec::Field;
                $wire {
                    $($field: self.$field.to_wire(),)+
                }
            }

            fn from_wire(wire: &$wire, msg: &'static str) -> Result<Self, $crate::msg::MsgError> {
                use $crate::msg::codec::Field;
                let m = Self {
                    $($field: Field::from_wire(&wire.$field, msg, stringify!($field))?,)+
                };
                $($check(&m, msg)?;)?
                Ok(m)
            }
        }

        $crate::msg::codec::fixed_message!($(#[$attr])* $msg ($kind));
    };
    ($(#[$attr:meta])* $msg:ident ($kind:expr)) => {
        impl $msg {
            pub fn encode(&self, out: &mut Vec<u8>) {
                $crate::msg::codec::encode_fixed(self, out)
            }

            $(#[$attr])*
            pub fn decode(payload: &[u8]) -> Result<Self, $crate::msg::MsgError> {
                $crate::msg::codec::decode_fixed(payload)
            }
        }

        $crate::msg::codec::message!($msg, $kind);
    };
}
pub(super) use fixed_message;

/// How a message field is carried in a wire field of type `W`.
pub(super) trait Field<W>: Sized {
    fn to_wire(&self) -> W;

    /// `msg` and `field` name the message and the field in errors.
    fn from_wire(wire: &W, msg: &'static str, field: &'static str) -> Result<Self, MsgError>;
}

macro_rules! le_fields {
    ($($native:ty => $le:ty),+) => {$(
        impl Field<$le> for $native {
            fn to_wire(&self) -> $le {
                <$le>::new(*self)
            }

            fn from_wire(wire: &$le, _: &'static str, _: &'static str) -> Result<Self, MsgError> {
                Ok(wire.get())
            }
        }
    )+};
}
le_fields!(u16 => U16, u32 => U32, u64 => U64);

/// An address space, as its u32.
impl Field<U32> for pagehop_mem::SpaceKey {
    fn to_wire(&self) -> U32 {
        U32::new(self.0)
    }

    fn from_wire(wire: &U32, _: &'static str, _: &'static str) -> Result<Self, MsgError> {
        Ok(pagehop_mem::SpaceKey(wire.get()))
    }
}

impl<const N: usize> Field<[u8; N]> for [u8; N] {
    fn to_wire(&self) -> [u8; N] {
        *self
    }

    fn from_wire(wire: &[u8; N], _: &'static str, _: &'static str) -> Result<Self, MsgError> {
        Ok(*wire)
    }
}

/// One byte, 0 or 1.
impl Field<u8> for bool {
    fn to_wire(&self) -> u8 {
        (*self).into()
    }

    fn from_wire(wire: &u8, msg: &'static str, field: &'static str) -> Result<Self, MsgError> {
        match *wire {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(invalid(msg, field, v.into())),
        }
    }
}

/// Enums carried as their one-byte value.
macro_rules! u8_enum_fields {
    ($($ty:ty),+) => {$(
        impl Field<u8> for $ty {
            fn to_wire(&self) -> u8 {
                *self as u8
            }

            fn from_wire(wire: &u8, msg: &'static str, field: &'static str) -> Result<Self, MsgError> {
                <$ty>::from_u8(*wire).ok_or_else(|| invalid(msg, field, (*wire).into()))
            }
        }
    )+};
}
u8_enum_fields!(Role, Lane, Protection);

pub(super) fn invalid(msg: &'static str, field: &'static str, value: u64) -> MsgError {
    MsgError::Invalid { msg, field, value }
}

// ---- encoding ----

/// Appends the bytes of a wire value.
pub(super) fn put<T: IntoBytes + Immutable + ?Sized>(out: &mut Vec<u8>, value: &T) {
    out.extend_from_slice(value.as_bytes());
}

/// A u32 count, saturated: an impossible count is refused by the peer.
pub(super) fn put_count(out: &mut Vec<u8>, n: usize) {
    put(out, &U32::new(u32::try_from(n).unwrap_or(u32::MAX)));
}

/// A string cut to at most `max` bytes at a character boundary.
pub(super) fn put_str(out: &mut Vec<u8>, s: &str, max: usize) {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    put_count(out, n);
    out.extend_from_slice(&s.as_bytes()[..n]);
}

// ---- decoding ----

/// Reads a payload front to back; every read is checked against the bytes
/// left.
pub(super) struct Cursor<'a> {
    pub(super) msg: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Reads a whole `kind` payload with `read`, then refuses bytes left
    /// over.
    pub(super) fn whole<T>(
        kind: FrameKind,
        payload: &'a [u8],
        read: impl FnOnce(&mut Self) -> Result<T, MsgError>,
    ) -> Result<T, MsgError> {
        let mut c = Self {
            msg: kind.name(),
            buf: payload,
            pos: 0,
        };
        let value = read(&mut c)?;
        match c.remaining() {
            0 => Ok(value),
            extra => Err(MsgError::Trailing { msg: c.msg, extra }),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// `field` needs `need` bytes from offset `at`.
    fn short(&self, field: &'static str, at: usize, need: usize) -> MsgError {
        MsgError::Short {
            msg: self.msg,
            field,
            at,
            need,
            len: self.buf.len(),
        }
    }

    /// The next wire struct. A short payload is refused naming the first
    /// field it does not hold.
    pub(super) fn fixed<W: Wire>(&mut self) -> Result<&'a W, MsgError> {
        let at = self.pos;
        let (wire, _) = W::ref_from_prefix(&self.buf[at..]).map_err(|_| {
            let left = self.remaining();
            let (field, offset, need) = W::FIELDS
                .iter()
                .copied()
                .find(|&(_, offset, size)| offset + size > left)
                .unwrap_or(("fields", 0, size_of::<W>()));
            self.short(field, at + offset, need)
        })?;
        self.pos += size_of::<W>();
        Ok(wire)
    }

    /// The next `n` values of `T`.
    pub(super) fn slice<T: FromBytes + Immutable + Unaligned>(
        &mut self,
        field: &'static str,
        n: usize,
    ) -> Result<&'a [T], MsgError> {
        let at = self.pos;
        let Ok((values, _)) = <[T]>::ref_from_prefix_with_elems(&self.buf[at..], n) else {
            return Err(self.short(field, at, n.saturating_mul(size_of::<T>())));
        };
        self.pos += size_of_val(values);
        Ok(values)
    }

    /// The next `T`: a single byte or a little-endian integer.
    pub(super) fn scalar<T: FromBytes + Immutable + Unaligned + Copy + 'a>(
        &mut self,
        field: &'static str,
    ) -> Result<T, MsgError> {
        Ok(self.slice::<T>(field, 1)?[0])
    }

    /// A bool byte, 0 or 1.
    pub(super) fn bool(&mut self, field: &'static str) -> Result<bool, MsgError> {
        bool::from_wire(&self.scalar(field)?, self.msg, field)
    }

    pub(super) fn invalid(&self, field: &'static str, value: u64) -> MsgError {
        invalid(self.msg, field, value)
    }

    /// A u32 length or count, checked against `max` and against the bytes
    /// left (each element takes at least `min_size` bytes).
    pub(super) fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_size: usize,
    ) -> Result<usize, MsgError> {
        let n = self.scalar::<U32>(field)?.get() as usize;
        if n > max {
            return Err(MsgError::TooLong {
                msg: self.msg,
                field,
                len: n as u64,
                max: max as u64,
            });
        }
        let need = n.saturating_mul(min_size);
        if need > self.remaining() {
            return Err(self.short(field, self.pos, need));
        }
        Ok(n)
    }

    /// A string of at most `max` bytes.
    pub(super) fn string(&mut self, field: &'static str, max: usize) -> Result<String, MsgError> {
        let n = self.count(field, max, 1)?;
        match std::str::from_utf8(self.slice(field, n)?) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(MsgError::Utf8 {
                msg: self.msg,
                field,
            }),
        }
    }
}
