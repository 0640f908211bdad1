//! pagehop's memory model, shared by both sides of the wire: pages and page
//! ranges ([`pages`]), one bit per page ([`page_bits`]), a process's address
//! space ([`layout`]), the names of a migration's address spaces
//! ([`space`]), and the two interfaces that move pages: a [`PageProvider`]
//! reads them, a [`PageSink`] takes them.
pub mod layout;
pub mod page_bits;
pub mod pages;
pub mod provider;
pub mod sink;
pub mod space;

pub use provider::{PageProvider, ProvideError};
pub use sink::PageSink;
pub use space::SpaceKey;

/// What a store or an image holds for a page.
#[derive(Debug, PartialEq, Eq)]
pub enum PageState<'a> {
    Absent,
    Zero,
    Data(&'a [u8]),
}

/// An error and its sources on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
