//! `inventory.img`: one `inventory_entry` record, after its type magic
//! alone (no common magic). Read: 1 `img_version` uint32 (required, must be
//! [`IMG_VERSION`]), 10 `tcp_close` bool, 14 `allow_uprobes` bool; the
//! other fields (ids, cgroup set, LSM, dump uptime, run id...) are skipped.
use super::image::records;
use super::protobuf::{FieldId, ProtoError, Reader, scan, skip};
use super::{CriuImageError, ImageKind};

/// The only image version CRIU 4.2 reads (`CRTOOLS_IMAGES_V1_1`; 1 means
/// images without the common magic).
pub const IMG_VERSION: u32 = 2;

/// What pagehop needs of a dump's inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inventory {
    pub img_version: u32,
    /// The dump was made with `--tcp-close`; the restore must pass it too.
    pub tcp_close: bool,
    /// The dump was made with `--allow-uprobes` (CRIU 4.2).
    pub allow_uprobes: bool,
}

const MSG: &str = "inventory_entry";
const FIELDS: [FieldId; 3] = [
    FieldId::new(MSG, "img_version", 1),
    FieldId::new(MSG, "tcp_close", 10),
    FieldId::new(MSG, "allow_uprobes", 14),
];

fn decode(bytes: &[u8]) -> Result<Inventory, ProtoError> {
    let [img_version, tcp_close, allow_uprobes] = scan(Reader::new(bytes), &FIELDS, skip)?;
    Ok(Inventory {
        img_version: img_version.uint32()?,
        tcp_close: tcp_close.opt_bool()?.unwrap_or(false),
        allow_uprobes: allow_uprobes.opt_bool()?.unwrap_or(false),
    })
}

/// Parses and validates `inventory.img` (exactly one record, version 2).
pub fn parse_inventory(bytes: &[u8]) -> Result<Inventory, CriuImageError> {
    let record = records(ImageKind::Inventory, bytes)?.single(MSG)?;
    let inv = decode(record.bytes).map_err(|e| record.error(e))?;
    if inv.img_version != IMG_VERSION {
        return Err(CriuImageError::ImgVersion {
            got: inv.img_version,
        });
    }
    Ok(inv)
}
