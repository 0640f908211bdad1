//! The names of CRIU's image files, and the check on a name the peer sends.

/// The dumped tree.
pub const PSTREE_FILE: &str = "pstree.img";
/// The dump's version and options; CRIU writes it last.
pub const INVENTORY_FILE: &str = "inventory.img";
/// Files CRIU writes in an images directory without the `.img` ending.
const OTHER_FILES: [&str; 3] = ["stats-dump", "stats-restore", "irmap-cache"];
/// Longest file name Linux accepts.
const NAME_MAX: usize = 255;

/// `pagemap-<vpid>.img`.
pub fn pagemap_file(vpid: u32) -> String {
    format!("pagemap-{vpid}.img")
}

/// `mm-<vpid>.img`.
pub fn mm_file(vpid: u32) -> String {
    format!("mm-{vpid}.img")
}

/// `core-<tid>.img` (a process leader's tid is its vpid).
pub fn core_file(tid: u32) -> String {
    format!("core-{tid}.img")
}

/// `pages-<pages_id>.img`, the data of a pagemap whose head has `pages_id`.
pub fn pages_file(pages_id: u32) -> String {
    format!("pages-{pages_id}.img")
}

/// Whether `name` may be written in an images directory on the peer's
/// word: a plain file name as CRIU makes them, at most 255 bytes of ASCII
/// letters, digits, `-`, `_` and `.`, starting with a letter or digit, with
/// no `..`, ending in `.img` after at least one character (or one of
/// `stats-dump`, `stats-restore`, `irmap-cache`). So no path, no hidden
/// file, and not `lazy-pages.socket` or a log.
pub fn is_image_file_name(name: &str) -> bool {
    let b = name.as_bytes();
    let charset = b
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    let ending = OTHER_FILES.contains(&name)
        || name
            .strip_suffix(".img")
            .is_some_and(|stem| !stem.is_empty());
    b.len() <= NAME_MAX
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && charset
        && !name.contains("..")
        && ending
}
