//! `--compress auto`'s sampler.
use pagehop_wire::batch::Compress;

/// `--compress auto` without paying for lz4 on data that does not compress:
/// after a batch that did not shrink, the next [`Lz4Sampler::BACKOFF`]
/// batches go raw untried; one that shrinks resumes compressing every batch.
#[derive(Default)]
pub(super) struct Lz4Sampler {
    skip: u32,
}

impl Lz4Sampler {
    const BACKOFF: u32 = 15;

    pub(super) fn should_try(&mut self, mode: Compress) -> bool {
        match mode {
            Compress::Off => false,
            Compress::Lz4 => true,
            Compress::Auto if self.skip > 0 => {
                self.skip -= 1;
                false
            }
            Compress::Auto => true,
        }
    }

    pub(super) fn record(&mut self, shrank: bool) {
        self.skip = if shrank { 0 } else { Self::BACKOFF };
    }
}
