//! The address space of a process, as /proc/PID/maps shows it.
use std::fs;
use std::io;
use std::path::PathBuf;

use crate::pages::{Range, RangeSet};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: cannot parse line {line:?}")]
    Parse { path: PathBuf, line: String },
}

/// One mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    pub range: Range,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// MAP_SHARED (`s`) rather than private (`p`).
    pub shared: bool,
    pub offset: u64,
    pub inode: u64,
    /// File path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`), empty for anonymous memory.
    pub name: String,
}

impl Vma {
    /// A private anonymous read-write mapping of `range` (what a restored
    /// image or a working set describes).
    pub fn anonymous(range: Range, name: &str) -> Self {
        Vma {
            range,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            inode: 0,
            name: name.to_string(),
        }
    }

    /// Kernel-provided mappings whose contents are not the process's own state.
    pub fn is_special(&self) -> bool {
        matches!(
            self.name.as_str(),
            "[vdso]" | "[vvar]" | "[vsyscall]" | "[vvar_vclock]" | "[uprobes]"
        )
    }

    /// Memory the process can write and that belongs to it: what a tracker watches.
    pub fn is_writable_private_state(&self) -> bool {
        self.write && !self.is_special()
    }

    pub fn is_anonymous(&self) -> bool {
        self.inode == 0 && !self.name.starts_with('/')
    }
}

/// All mappings of a process, sorted by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub vmas: Vec<Vma>,
}

impl Layout {
    pub fn read(pid: i32) -> Result<Self, LayoutError> {
        let path = PathBuf::from(format!("/proc/{pid}/maps"));
        let text = fs::read_to_string(&path).map_err(|source| LayoutError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|line| LayoutError::Parse { path, line })
    }

    /// Parses maps text; on failure returns the offending line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let vmas = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(parse_line)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { vmas })
    }

    /// The writable ranges a tracker should cover.
    pub fn writable_ranges(&self) -> RangeSet {
        RangeSet::from_ranges(
            self.vmas
                .iter()
                .filter(|v| v.is_writable_private_state())
                .map(|v| v.range)
                .collect(),
        )
    }

    /// All mapped ranges.
    pub fn mapped(&self) -> RangeSet {
        RangeSet::from_ranges(self.vmas.iter().map(|v| v.range).collect())
    }

    pub fn heap(&self) -> Option<Range> {
        self.vmas
            .iter()
            .find(|v| v.name == "[heap]")
            .map(|v| v.range)
    }
}

fn parse_line(line: &str) -> Result<Vma, String> {
    let bad = || line.to_string();
    let mut fields = line.splitn(6, ' ');
    let addrs = fields.next().ok_or_else(bad)?;
    let perms = fields.next().ok_or_else(bad)?.as_bytes();
    let offset = fields.next().ok_or_else(bad)?;
    let _dev = fields.next().ok_or_else(bad)?;
    let inode = fields.next().ok_or_else(bad)?;
    let name = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = addrs.split_once('-').ok_or_else(bad)?;
    let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
    if perms.len() != 4 {
        return Err(bad());
    }
    Ok(Vma {
        range: Range::new(hex(start)?, hex(end)?),
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset: hex(offset)?,
        inode: inode.parse().map_err(|_| bad())?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234                       /usr/bin/cat
55d0c0c21000-55d0c0c42000 rw-p 00000000 00:00 0                          [heap]
600000000000-600004000000 rw-p 00000000 00:00 0 
7ffd1c5a1000-7ffd1c5c2000 rw-p 00000000 00:00 0                          [stack]
7ffd1c5f7000-7ffd1c5f9000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_maps() {
        let layout = Layout::parse(SAMPLE).expect("sample parses");
        assert_eq!(layout.vmas.len(), 6);
        assert_eq!(layout.vmas[0].name, "/usr/bin/cat");
        assert!(!layout.vmas[0].write && layout.vmas[0].read);
        assert!(layout.vmas[2].is_anonymous() && layout.vmas[2].name.is_empty());
        assert_eq!(
            layout.heap(),
            Some(Range::new(0x55d0c0c21000, 0x55d0c0c42000))
        );
        let w = layout.writable_ranges();
        assert_eq!(w.ranges().len(), 3);
        assert!(layout.vmas[4].is_special());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Layout::parse("zzz").is_err());
        assert!(Layout::parse("1000-2000 rw 0 0:0 0").is_err());
    }

    #[test]
    fn reads_own_maps() {
        let layout = Layout::read(std::process::id() as i32).expect("own maps");
        assert!(layout.vmas.iter().any(|v| v.name == "[stack]"));
    }
}
