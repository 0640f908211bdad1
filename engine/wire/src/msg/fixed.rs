//! The fixed-size messages: each is one wire struct (see the layouts in the
//! [module docs](super)), cast from the payload in one checked step.

use zerocopy::byteorder::little_endian::{U16, U32, U64};

use super::codec::{Field, Fixed, fixed_message, invalid, wire_struct};
use super::{
    Attach, Auth, Commit, Done, EndOfRound, Hello, LayoutAck, MsgError, PageRequest, Restored,
    Switchover, VerifyResult,
};
use crate::frame::FrameKind;

fixed_message! {
    /// Refuses an unknown role and a page size that is not a power of two.
    Hello (FrameKind::Hello) as HelloWire (48 bytes) {
        version: U16,
        role: u8,
        protection: u8,
        page_size: U32,
        capabilities: U64,
        nonce: [u8; 32],
    }
    then page_size_is_power_of_two
}

fn page_size_is_power_of_two(hello: &Hello, msg: &'static str) -> Result<(), MsgError> {
    if hello.page_size.is_power_of_two() {
        Ok(())
    } else {
        Err(invalid(msg, "page_size", hello.page_size.into()))
    }
}

fixed_message! {
    Auth (FrameKind::Auth) as AuthWire (32 bytes) {
        mac: [u8; 32],
    }
}

fixed_message! {
    EndOfRound (FrameKind::EndOfRound) as EndOfRoundWire (28 bytes) {
        round: U32,
        pages: U64,
        bytes_raw: U64,
        bytes_wire: U64,
    }
}

fixed_message! {
    /// Refuses a `postcopy` or `criu` byte other than 0 or 1.
    Switchover (FrameKind::Switchover) as SwitchoverWire (6 bytes) {
        final_round: U32,
        postcopy: u8,
        criu: u8,
    }
}

fixed_message! {
    Done (FrameKind::Done) as DoneWire (8 bytes) {
        pages_sent: U64,
    }
}

fixed_message! {
    /// Refuses an address that is not page aligned or not a user address.
    PageRequest (FrameKind::PageRequest) as PageRequestWire (16 bytes) {
        space: U32,
        addr: U64,
        pages: U32,
    }
    then addr_is_a_user_page
}

fn addr_is_a_user_page(req: &PageRequest, msg: &'static str) -> Result<(), MsgError> {
    if req.addr.is_multiple_of(4096) && req.addr < super::MAX_USER_ADDRESS {
        Ok(())
    } else {
        Err(invalid(msg, "addr", req.addr))
    }
}

fixed_message! {
    LayoutAck (FrameKind::LayoutAck) as LayoutAckWire (4 bytes) {
        vmas: U32,
    }
}

fixed_message! {
    Restored (FrameKind::Restored) as RestoredWire (4 bytes) {
        tasks: U32,
    }
}

fixed_message! {
    Commit (FrameKind::Commit) as CommitWire (4 bytes) {
        tasks: U32,
    }
}

fixed_message! {
    /// Refuses an unknown lane.
    Attach (FrameKind::Attach) as AttachWire (13 bytes) {
        session: U64,
        lane: u8,
        epoch: U32,
    }
}

wire_struct! {
    /// `VerifyResult`: the address field is 0 without the flag.
    struct VerifyResultWire (17 bytes) {
        has_mismatch: u8,
        mismatch: U64,
        pages_checked: U64,
    }
}

impl Fixed for VerifyResult {
    type Wire = VerifyResultWire;

    fn to_wire(&self) -> VerifyResultWire {
        VerifyResultWire {
            has_mismatch: self.mismatch.is_some().to_wire(),
            mismatch: U64::new(self.mismatch.unwrap_or(0)),
            pages_checked: U64::new(self.pages_checked),
        }
    }

    fn from_wire(wire: &VerifyResultWire, msg: &'static str) -> Result<Self, MsgError> {
        let has_mismatch = bool::from_wire(&wire.has_mismatch, msg, "has_mismatch")?;
        let addr = wire.mismatch.get();
        if !has_mismatch && addr != 0 {
            return Err(invalid(msg, "mismatch address without the flag", addr));
        }
        Ok(Self {
            mismatch: has_mismatch.then_some(addr),
            pages_checked: wire.pages_checked.get(),
        })
    }
}

fixed_message! {
    /// Refuses a flag other than 0 or 1, and an address without the flag.
    VerifyResult (FrameKind::VerifyResult)
}
