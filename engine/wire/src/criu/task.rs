//! `core-N.img`: one `core_entry` record per thread; a process leader's
//! holds `tc` (field 3, a `task_core_entry`), read here: 1 `task_state`,
//! 2 `exit_code` (uint32, required; 3 `personality`, 4 `flags`,
//! 5 `blk_sigset` and 6 `comm` are required too and checked for presence),
//! 21 `stop_signo` uint32 (optional). `core_entry` field 1 `mtype` is
//! required; the register state and the rest are skipped.
use super::image::records;
use super::protobuf::{FieldId, ProtoError, Reader, numbered, scan, skip};
use super::{CriuImageError, ImageKind};

/// A dumped task's state (CRIU's TASK_ALIVE, TASK_DEAD, TASK_STOPPED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Running or sleeping: restored running.
    Alive,
    /// A zombie: restored as one; on the lazy-pages socket it sends its
    /// negated pid and no userfaultfd.
    Dead,
    /// Stopped (SIGSTOP and the like): restored stopped, in state T.
    Stopped,
}

/// What pagehop needs of a process leader's core image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCore {
    pub task_state: TaskState,
    pub exit_code: u32,
    /// The signal that stopped a [`TaskState::Stopped`] task, if recorded.
    pub stop_signo: Option<u32>,
}

const CORE: &str = "core_entry";
const CORE_FIELDS: [FieldId; 2] = [FieldId::new(CORE, "mtype", 1), FieldId::new(CORE, "tc", 3)];
const TASK: &str = "task_core_entry";
#[rustfmt::skip]
const TASK_FIELDS: [FieldId; 6] = numbered(TASK, [
    "task_state", "exit_code", "personality", "flags", "blk_sigset", "comm",
]);
const STOP_SIGNO: FieldId = FieldId::new(TASK, "stop_signo", 21);

/// task_core_entry's fields: (task_state, exit_code, stop_signo).
fn decode_tc(r: Reader<'_>) -> Result<(u32, u32, Option<u32>), ProtoError> {
    let mut stop_signo = None;
    let [state, exit_code, personality, flags, blk_sigset, comm] =
        scan(r, &TASK_FIELDS, |tag, v| {
            if tag == STOP_SIGNO.tag {
                if stop_signo.is_some() {
                    return Err(ProtoError::DuplicateField { field: STOP_SIGNO });
                }
                stop_signo = Some(v.uint32(STOP_SIGNO)?);
            }
            Ok(())
        })?;
    let task = (state.uint32()?, exit_code.uint32()?, stop_signo);
    // Required, not used: checked for presence and type.
    personality.uint32()?;
    flags.uint32()?;
    blk_sigset.uint64()?;
    comm.bytes()?;
    Ok(task)
}

fn decode(bytes: &[u8]) -> Result<(u32, u32, Option<u32>), ProtoError> {
    let [mtype, tc] = scan(Reader::new(bytes), &CORE_FIELDS, skip)?;
    mtype.uint32()?;
    let tc = tc.message()?;
    decode_tc(tc).map_err(|e| ProtoError::Nested {
        field: CORE_FIELDS[1],
        source: Box::new(e),
    })
}

/// Parses and validates a process leader's `core-N.img` (exactly one
/// record, with `tc`).
pub fn parse_core(bytes: &[u8]) -> Result<TaskCore, CriuImageError> {
    let record = records(ImageKind::Core, bytes)?.single(CORE)?;
    let (state, exit_code, stop_signo) = decode(record.bytes).map_err(|e| record.error(e))?;
    let task_state = match state {
        1 => TaskState::Alive,
        2 => TaskState::Dead,
        3 => TaskState::Stopped,
        got => return Err(CriuImageError::TaskState { got }),
    };
    Ok(TaskCore {
        task_state,
        exit_code,
        stop_signo,
    })
}
