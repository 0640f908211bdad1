//! A minimal, strict reader of the protobuf (proto2) wire format: just what
//! the CRIU messages of this module need.
//!
//! A message is a sequence of fields, each a varint key (`tag << 3 |
//! wire type`) and a value: a varint (type 0), 8 little-endian bytes (1), a
//! varint length and that many bytes (2), or 4 little-endian bytes (5).
//! Groups (3, 4) and the undefined types 6 and 7 are refused: no CRIU
//! message has them. Fields the caller does not know are skipped whatever
//! their (supported) type; a known field of the wrong type, a value that does
//! not fit its declared type (a `uint32` of 2^32 or more, a `bool` other than
//! 0 or 1), a truncated value and a missing required field are errors. Repeated
//! scalars are read packed or not (CRIU writes them unpacked), at most
//! [`MAX_REPEATED`] elements a field. A non-repeated field given twice is
//! refused (proto2 would keep the last scalar and merge messages; CRIU
//! never writes one twice).
//!
//! Nothing is allocated from a length read from the input: values are
//! borrowed from the input, lengths are checked against what is left first.
//! Byte offsets in errors count from the start of the record.
use std::fmt;

/// Most elements a repeated field may have.
pub const MAX_REPEATED: usize = 1 << 20;

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A field of a CRIU message, to name it in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldId {
    pub message: &'static str,
    pub name: &'static str,
    pub tag: u32,
}

impl FieldId {
    pub const fn new(message: &'static str, name: &'static str, tag: u32) -> Self {
        FieldId { message, name, tag }
    }
}

/// The fields of `message` named `names`, numbered from 1.
pub const fn numbered<const N: usize>(
    message: &'static str,
    names: [&'static str; N],
) -> [FieldId; N] {
    let mut out = [FieldId::new(message, "", 0); N];
    let mut i = 0;
    while i < N {
        out[i] = FieldId::new(message, names[i], i as u32 + 1);
        i += 1;
    }
    out
}

impl fmt::Display for FieldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} (field {})", self.message, self.name, self.tag)
    }
}

/// What is wrong with a record's protobuf encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("varint at byte {offset} is truncated")]
    TruncatedVarint { offset: usize },
    #[error("varint at byte {offset} does not fit in 64 bits")]
    VarintOverflow { offset: usize },
    #[error("field key {key:#x} at byte {offset} has field number 0 or one over 2^29")]
    BadKey { offset: usize, key: u64 },
    #[error("field {tag} at byte {offset} has wire type {wire_type}, which no CRIU image uses")]
    UnsupportedWireType {
        offset: usize,
        tag: u32,
        wire_type: u8,
    },
    #[error("field {tag} at byte {offset} needs {need} bytes, only {have} are left")]
    TruncatedField {
        offset: usize,
        tag: u32,
        need: u64,
        have: usize,
    },
    #[error("{field} has wire type {got}, expected {expected}")]
    WireType {
        field: FieldId,
        got: u8,
        expected: u8,
    },
    #[error("{field} is required but missing")]
    MissingField { field: FieldId },
    #[error("{field}: {value} is out of range")]
    OutOfRange { field: FieldId, value: u64 },
    #[error("{field} has more than {MAX_REPEATED} elements")]
    TooManyElements { field: FieldId },
    #[error("{field} is given twice")]
    DuplicateField { field: FieldId },
    #[error("{field} does not decode")]
    Nested {
        field: FieldId,
        #[source]
        source: Box<ProtoError>,
    },
    #[error("{field}, element {index}, does not decode")]
    Element {
        field: FieldId,
        index: usize,
        #[source]
        source: Box<ProtoError>,
    },
}

/// A field's value as it is on the wire.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    /// 8 bytes (no field read here has this type).
    Fixed64,
    /// Length-delimited bytes and their offset in the record.
    Bytes(&'a [u8], usize),
    /// 4 bytes (likewise).
    Fixed32,
}

impl<'a> Value<'a> {
    fn wire_type(&self) -> u8 {
        match self {
            Value::Varint(_) => VARINT,
            Value::Fixed64 => FIXED64,
            Value::Bytes(..) => LEN,
            Value::Fixed32 => FIXED32,
        }
    }

    fn varint(self, field: FieldId) -> Result<u64, ProtoError> {
        match self {
            Value::Varint(v) => Ok(v),
            other => Err(ProtoError::WireType {
                field,
                got: other.wire_type(),
                expected: VARINT,
            }),
        }
    }

    /// A `uint64`.
    pub fn uint64(self, field: FieldId) -> Result<u64, ProtoError> {
        self.varint(field)
    }

    /// A `uint32`: refused over `u32::MAX`.
    pub fn uint32(self, field: FieldId) -> Result<u32, ProtoError> {
        let v = self.varint(field)?;
        u32::try_from(v).map_err(|_| ProtoError::OutOfRange { field, value: v })
    }

    /// A `sint64` (zigzag).
    pub fn sint64(self, field: FieldId) -> Result<i64, ProtoError> {
        let v = self.varint(field)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A `bool`: 0 or 1.
    pub fn bool(self, field: FieldId) -> Result<bool, ProtoError> {
        match self.varint(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(ProtoError::OutOfRange { field, value }),
        }
    }

    /// A `bytes` or `string` field's bytes (not checked for UTF-8).
    pub fn bytes(self, field: FieldId) -> Result<&'a [u8], ProtoError> {
        self.message(field).map(|r| r.buf)
    }

    /// An embedded message, to be read with the returned reader.
    pub fn message(self, field: FieldId) -> Result<Reader<'a>, ProtoError> {
        match self {
            Value::Bytes(bytes, offset) => Ok(Reader {
                buf: bytes,
                pos: 0,
                base: offset,
            }),
            other => Err(ProtoError::WireType {
                field,
                got: other.wire_type(),
                expected: LEN,
            }),
        }
    }

    /// One occurrence of a repeated varint field, packed (many values) or
    /// not (one), appended to `out` through `convert`.
    fn push_varints<T>(
        self,
        field: FieldId,
        out: &mut Vec<T>,
        convert: impl Fn(u64) -> Option<T>,
    ) -> Result<(), ProtoError> {
        let mut push = |v: u64| {
            if out.len() >= MAX_REPEATED {
                return Err(ProtoError::TooManyElements { field });
            }
            let t = convert(v).ok_or(ProtoError::OutOfRange { field, value: v })?;
            out.push(t);
            Ok(())
        };
        match self {
            Value::Varint(v) => push(v),
            Value::Bytes(bytes, offset) => {
                let mut r = Reader {
                    buf: bytes,
                    pos: 0,
                    base: offset,
                };
                while !r.at_end() {
                    push(r.varint()?)?;
                }
                Ok(())
            }
            other => Err(ProtoError::WireType {
                field,
                got: other.wire_type(),
                expected: VARINT,
            }),
        }
    }

    /// One occurrence of a `repeated uint32` field.
    pub fn push_uint32(self, field: FieldId, out: &mut Vec<u32>) -> Result<(), ProtoError> {
        self.push_varints(field, out, |v| u32::try_from(v).ok())
    }
}

/// Reads the fields of one message in order.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the record, for errors.
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader of a whole record.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            base: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let start = self.offset();
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(ProtoError::TruncatedVarint { offset: start });
            };
            self.pos += 1;
            // The tenth byte holds bit 63 only.
            if i == 9 && b > 1 {
                return Err(ProtoError::VarintOverflow { offset: start });
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError::VarintOverflow { offset: start })
    }

    fn take(&mut self, tag: u32, offset: usize, need: u64) -> Result<&'a [u8], ProtoError> {
        let have = self.buf.len() - self.pos;
        let n = usize::try_from(need).ok().filter(|&n| n <= have).ok_or(
            ProtoError::TruncatedField {
                offset,
                tag,
                need,
                have,
            },
        )?;
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    /// The next field's tag and value, or `None` at the end of the message.
    #[allow(clippy::should_implement_trait)]
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, ProtoError> {
        if self.at_end() {
            return Ok(None);
        }
        let offset = self.offset();
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3)
            .ok()
            .filter(|&t| (1..1 << 29).contains(&t))
            .ok_or(ProtoError::BadKey { offset, key })?;
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            FIXED64 => {
                self.take(tag, offset, 8)?;
                Value::Fixed64
            }
            LEN => {
                let len = self.varint()?;
                let at = self.offset();
                Value::Bytes(self.take(tag, offset, len)?, at)
            }
            FIXED32 => {
                self.take(tag, offset, 4)?;
                Value::Fixed32
            }
            wire_type => {
                return Err(ProtoError::UnsupportedWireType {
                    offset,
                    tag,
                    wire_type,
                });
            }
        };
        Ok(Some((tag, value)))
    }
}

/// A field a decoder asked [`scan`] for, and its value if the message has it.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    id: FieldId,
    value: Option<Value<'a>>,
}

impl<'a> Field<'a> {
    /// The value of a required field.
    fn get(self) -> Result<Value<'a>, ProtoError> {
        self.value
            .ok_or(ProtoError::MissingField { field: self.id })
    }

    pub fn uint64(self) -> Result<u64, ProtoError> {
        self.get()?.uint64(self.id)
    }

    pub fn uint32(self) -> Result<u32, ProtoError> {
        self.get()?.uint32(self.id)
    }

    pub fn sint64(self) -> Result<i64, ProtoError> {
        self.get()?.sint64(self.id)
    }

    pub fn bytes(self) -> Result<&'a [u8], ProtoError> {
        self.get()?.bytes(self.id)
    }

    pub fn message(self) -> Result<Reader<'a>, ProtoError> {
        self.get()?.message(self.id)
    }

    pub fn opt_uint64(self) -> Result<Option<u64>, ProtoError> {
        self.value.map(|v| v.uint64(self.id)).transpose()
    }

    pub fn opt_uint32(self) -> Result<Option<u32>, ProtoError> {
        self.value.map(|v| v.uint32(self.id)).transpose()
    }

    pub fn opt_bool(self) -> Result<Option<bool>, ProtoError> {
        self.value.map(|v| v.bool(self.id)).transpose()
    }
}

/// Reads a whole message: the value of each field of `ids` (a field given
/// twice is refused: CRIU writes each once, and proto2 would merge two
/// messages), and every field not in `ids` is handed to `other` (for
/// repeated fields; it ignores unknown ones, see [`skip`]). Wire types are
/// checked when a [`Field`] is read.
pub fn scan<'a, const N: usize>(
    mut r: Reader<'a>,
    ids: &[FieldId; N],
    mut other: impl FnMut(u32, Value<'a>) -> Result<(), ProtoError>,
) -> Result<[Field<'a>; N], ProtoError> {
    let mut fields = ids.map(|id| Field { id, value: None });
    while let Some((tag, value)) = r.next()? {
        match fields.iter_mut().find(|f| f.id.tag == tag) {
            Some(f) if f.value.is_some() => {
                return Err(ProtoError::DuplicateField { field: f.id });
            }
            Some(f) => f.value = Some(value),
            None => other(tag, value)?,
        }
    }
    Ok(fields)
}

/// For [`scan`]: no other field is read.
pub fn skip(_tag: u32, _value: Value<'_>) -> Result<(), ProtoError> {
    Ok(())
}
