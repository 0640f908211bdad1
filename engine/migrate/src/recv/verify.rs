//! `--verify` on the destination: the source's digests against the stored
//! pages.
use pagehop_dest::store::{PageState, PageStore};
use pagehop_wire::msg::{VerifyDigests, VerifyResult};
use pagehop_wire::verify::page_digest;

use crate::report::Verify;

#[derive(Default)]
pub struct Verification {
    mismatch: Option<u64>,
    checked: u64,
}

impl Verification {
    pub fn check(&mut self, store: &PageStore, digests: &VerifyDigests) {
        let ps = store.page_size();
        for (i, &want) in digests.hashes.iter().enumerate() {
            let addr = digests.start + (i * ps) as u64;
            let got = match store.get(digests.space, addr) {
                PageState::Data(d) => page_digest(Some(d), ps),
                PageState::Zero | PageState::Absent => page_digest(None, ps),
            };
            self.checked += 1;
            if got != want && self.mismatch.is_none_or(|m| addr < m) {
                self.mismatch = Some(addr);
            }
        }
    }

    /// The answer for the source.
    pub fn result(&self) -> VerifyResult {
        VerifyResult {
            mismatch: self.mismatch,
            pages_checked: self.checked,
        }
    }

    /// The verdict for the report.
    pub fn verdict(&self) -> Verify {
        match self.mismatch {
            None => Verify::Ok,
            Some(addr) => Verify::Mismatch {
                addr,
                pages_checked: None,
            },
        }
    }
}
