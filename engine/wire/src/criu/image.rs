//! CRIU's image framing: the magics, then length-prefixed records.
//!
//! ```text
//! | COMMON_MAGIC u32 | type magic u32 | len u32 | len bytes | len u32 | ... EOF
//! ```
//!
//! `inventory.img` starts with its type magic alone. A record of
//! length 0 is an empty message. The file ends after the last record; a
//! length or a record cut short is an error.
use super::protobuf::ProtoError;
use super::{CriuImageError, ImageKind, MagicKind};

/// First u32 of every image but `inventory.img` (CRIU's `IMG_COMMON_MAGIC`).
pub const COMMON_MAGIC: u32 = 0x5456_4319;

/// Largest record accepted.
pub const MAX_RECORD_LEN: u32 = 16 << 20;
/// Most records accepted in one file.
pub const MAX_RECORDS: usize = 1 << 20;

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// One record of an image.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record<'a> {
    pub kind: ImageKind,
    /// Its position in the file, from 0.
    pub index: usize,
    /// Byte offset of its length prefix in the file.
    pub offset: usize,
    pub bytes: &'a [u8],
}

impl Record<'_> {
    /// `err`, located at this record.
    pub fn error(&self, source: ProtoError) -> CriuImageError {
        CriuImageError::Protobuf {
            kind: self.kind,
            index: self.index,
            offset: self.offset,
            source,
        }
    }
}

/// The records of an image, after its magics were checked by [`records`].
/// Stops after the first error.
#[derive(Debug, Clone)]
pub(super) struct Records<'a> {
    kind: ImageKind,
    buf: &'a [u8],
    pos: usize,
    index: usize,
}

/// Checks the magics of an image of `kind` and iterates over its records.
pub(super) fn records(kind: ImageKind, bytes: &[u8]) -> Result<Records<'_>, CriuImageError> {
    let magics = [
        (MagicKind::Common, COMMON_MAGIC),
        (MagicKind::Type, kind.magic()),
    ];
    let header = match kind {
        ImageKind::Inventory => &magics[1..],
        _ => &magics[..],
    };
    let need = 4 * header.len();
    if bytes.len() < need {
        return Err(CriuImageError::TooShort {
            kind,
            len: bytes.len(),
            need,
        });
    }
    for (i, &(which, expected)) in header.iter().enumerate() {
        let got = le32(&bytes[4 * i..]);
        if got != expected {
            return Err(CriuImageError::BadMagic {
                kind,
                which,
                expected,
                got,
            });
        }
    }
    Ok(Records {
        kind,
        buf: bytes,
        pos: need,
        index: 0,
    })
}

impl<'a> Records<'a> {
    fn next_record(&mut self) -> Result<Record<'a>, CriuImageError> {
        let (kind, index, offset) = (self.kind, self.index, self.pos);
        if index >= MAX_RECORDS {
            return Err(CriuImageError::TooManyRecords { kind });
        }
        let have = self.buf.len() - offset;
        if have < 4 {
            return Err(CriuImageError::TruncatedRecord {
                kind,
                index,
                offset,
                need: 4,
                have,
            });
        }
        let len = le32(&self.buf[offset..]);
        if len > MAX_RECORD_LEN {
            return Err(CriuImageError::RecordTooLarge {
                kind,
                index,
                offset,
                len,
            });
        }
        // At most 16 MiB: fits in usize.
        let n = len as usize;
        if have - 4 < n {
            return Err(CriuImageError::TruncatedRecord {
                kind,
                index,
                offset,
                need: 4 + u64::from(len),
                have,
            });
        }
        let bytes = &self.buf[offset + 4..offset + 4 + n];
        self.pos = offset + 4 + n;
        self.index += 1;
        Ok(Record {
            kind,
            index,
            offset,
            bytes,
        })
    }

    /// The only record of a one-record image; `what` names it in errors.
    pub fn single(mut self, what: &'static str) -> Result<Record<'a>, CriuImageError> {
        let kind = self.kind;
        let record = self
            .next()
            .ok_or(CriuImageError::MissingRecord { kind, what })??;
        let extra = self.try_fold(0usize, |n, r| r.map(|_| n + 1))?;
        if extra > 0 {
            return Err(CriuImageError::ExtraRecords {
                kind,
                count: 1 + extra,
            });
        }
        Ok(record)
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, CriuImageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let r = self.next_record();
        if r.is_err() {
            self.pos = self.buf.len();
        }
        Some(r)
    }
}
