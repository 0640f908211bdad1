//! Where received pages go: [`PageSink`].
//!
//! Implementations: the destination's page store (`pagehop_dest::store`),
//! the userfaultfds of restored processes (`pagehop_dest::uffd_sink`), and an
//! image directory (`pagehop_wire::image::ImageWriter`). The receiver fills
//! the store during the rounds and empties it into its one output sink at
//! the switch ([`drain`]); a sink that persists (a standby) takes the same
//! calls.
use crate::pages::Range;
use crate::space::SpaceKey;

/// Takes pages of one or more address spaces.
pub trait PageSink {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The mappings of `space` that pages will land in (the layout the
    /// source sent). Pages outside them are refused.
    fn set_layout(&mut self, space: SpaceKey, ranges: &[Range]) -> Result<(), Self::Error>;

    /// Takes pages of `space`, in ascending address order: each is its
    /// address and `None` for a zero page, or its data (one page long).
    fn put(&mut self, space: SpaceKey, pages: &[(u64, Option<&[u8]>)]) -> Result<(), Self::Error>;

    /// Every page is in: makes what was taken final (installed, written
    /// out). Returns the number of pages taken.
    fn finish(&mut self) -> Result<u64, Self::Error>;
}

/// Pages handed to a sink per [`PageSink::put`] by [`drain`].
pub const DRAIN_BATCH: usize = 256;

/// Hands every page of `pages` (ascending: address, `None` for a zero page
/// or the data) of `space` to `sink`, [`DRAIN_BATCH`] at a time.
pub fn drain<'a, S: PageSink + ?Sized>(
    space: SpaceKey,
    pages: impl IntoIterator<Item = (u64, Option<&'a [u8]>)>,
    sink: &mut S,
) -> Result<(), S::Error> {
    let mut batch = Vec::with_capacity(DRAIN_BATCH);
    for page in pages {
        batch.push(page);
        if batch.len() == DRAIN_BATCH {
            sink.put(space, &batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        sink.put(space, &batch)?;
    }
    Ok(())
}
