//! `--verify` on the source: digests of every page of the frozen source's
//! writable mappings go to the destination, which compares them with what
//! it received and answers with the first mismatch.
use std::collections::BTreeMap;

use pagehop_mem::layout::Layout;
use pagehop_mem::pages::Range;
use pagehop_mem::provider::runs_of;
use pagehop_mem::{PageProvider, SpaceKey};
use pagehop_wire::conn::Conn;
use pagehop_wire::msg::{Done, VerifyDigests, VerifyResult};
use pagehop_wire::verify::page_digest;

use super::SendError;
use crate::report::Verify;

/// Pages hashed per `VerifyDigests` frame.
const CHUNK_PAGES: usize = 256;

/// Sends the digests of every space's writable pages read from
/// `provider`, then `Done`; returns the destination's verdict.
pub fn verify(
    provider: &dyn PageProvider,
    layouts: &BTreeMap<SpaceKey, Layout>,
    control: &mut Conn,
) -> Result<Verify, SendError> {
    let ps = provider.page_size();
    let mut buf = vec![0u8; CHUNK_PAGES * ps];
    let (mut runs, mut present, mut pages) = (Vec::new(), Vec::new(), Vec::new());
    let ranges: Vec<(SpaceKey, Range)> = layouts
        .iter()
        .flat_map(|(&space, l)| {
            let writable = l.writable_ranges();
            writable
                .ranges()
                .iter()
                .map(|&r| (space, r))
                .collect::<Vec<_>>()
        })
        .collect();
    for (space, range) in ranges {
        let mut addr = range.start;
        while addr < range.end {
            let n = (((range.end - addr) / ps as u64) as usize).min(CHUNK_PAGES);
            pages.clear();
            pages.extend((0..n as u64).map(|i| addr + i * ps as u64));
            runs_of(&pages, ps, &mut runs);
            provider.read(space, &runs, &mut buf[..n * ps], &mut present)?;
            // Unreadable pages (guard pages, PROT_NONE holes) compare as zero
            // on both sides.
            let hashes = buf[..n * ps]
                .chunks_exact(ps)
                .zip(&present)
                .map(|(page, &here)| page_digest(here.then_some(page), ps))
                .collect();
            control.send(&VerifyDigests {
                space,
                start: addr,
                hashes,
            })?;
            addr += (n * ps) as u64;
        }
    }
    control.send(&Done { pages_sent: 0 })?;
    let result: VerifyResult = control.recv_msg()?;
    Ok(match result.mismatch {
        None => Verify::Ok,
        Some(addr) => Verify::Mismatch {
            addr,
            pages_checked: Some(result.pages_checked),
        },
    })
}
