//! tracefs: mounted if missing, and the tracepoint layouts the eBPF programs
//! assume checked against the kernel's format files.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use pagehop_common::tp_offsets;

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and mounting it at {path} failed (pagehop needs root)")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("this kernel has no tracepoint {event} ({path} is missing)")]
    NoTracepoint { event: String, path: PathBuf },
    #[error(
        "tracepoint {event}: field {field} is at offset {actual:?}, the eBPF program expects {expected}"
    )]
    Layout {
        event: String,
        field: &'static str,
        expected: usize,
        actual: Option<usize>,
    },
}

const MOUNT_POINT: &str = "/sys/kernel/tracing";

/// The tracefs root with events, mounting it when needed.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    for dir in [MOUNT_POINT, "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let path = PathBuf::from(MOUNT_POINT);
    pagehop_sys::mount_tracefs(&path).map_err(|source| TracefsError::Mount {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Offset of `field` in a tracepoint format file.
fn field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.rsplit([' ', '*']).next()?.split('[').next()?;
        if name != field {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .trim()
            .parse()
            .ok()
    })
}

/// Checks every offset the programs read.
pub fn check_offsets() -> Result<(), TracefsError> {
    let root = ensure_mounted()?;
    let checks: [(&str, &str, &'static str, usize); 6] = [
        (
            "exceptions",
            "page_fault_user",
            "address",
            tp_offsets::FAULT_ADDRESS,
        ),
        (
            "exceptions",
            "page_fault_user",
            "error_code",
            tp_offsets::FAULT_ERROR_CODE,
        ),
        (
            "exceptions",
            "page_fault_kernel",
            "error_code",
            tp_offsets::FAULT_ERROR_CODE,
        ),
        ("task", "task_newtask", "pid", tp_offsets::NEWTASK_PID),
        (
            "task",
            "task_newtask",
            "clone_flags",
            tp_offsets::NEWTASK_CLONE_FLAGS,
        ),
        (
            "sched",
            "sched_process_exit",
            "group_dead",
            tp_offsets::EXIT_GROUP_DEAD,
        ),
    ];
    for (category, name, field, expected) in checks {
        let event = format!("{category}:{name}");
        let path = root.join("events").join(category).join(name).join("format");
        let format = fs::read_to_string(&path).map_err(|_| TracefsError::NoTracepoint {
            event: event.clone(),
            path,
        })?;
        let actual = field_offset(&format, field);
        if actual != Some(expected) {
            return Err(TracefsError::Layout {
                event,
                field,
                expected,
                actual,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_format_fields() {
        let format = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                      \tfield:unsigned long address;\toffset:8;\tsize:8;\tsigned:0;\n\
                      \tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\
                      \tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";
        assert_eq!(field_offset(format, "address"), Some(8));
        assert_eq!(field_offset(format, "comm"), Some(12));
        assert_eq!(field_offset(format, "group_dead"), Some(32));
        assert_eq!(field_offset(format, "missing"), None);
    }
}
