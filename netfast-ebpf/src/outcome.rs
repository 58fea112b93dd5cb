//! What a BPF function (one not inlined) returns: a `Result<u16, DropReason>` in one fully
//! defined register. Returned as an enum, its unused bits are undefined and LLVM may fill them
//! from any register — one that held a pointer, say — and the verifier refuses arithmetic on
//! pointers, even when the result is never used.

use netfast_common::DropReason;

/// Set for a drop reason; a value has only its low 17 bits (a port, or `NONE`).
const ERR: u32 = 1 << 20;
const VALUE: u32 = 0x1_ffff;

#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Outcome(pub u32);

impl Outcome {
    /// A value that is none of the 65536 ports: "nothing" for bodies that return one.
    pub const NONE: u32 = 0x1_0000;

    /// From a body that returns `Ok(0)` for false and `Ok(1)` for true, or a port (or
    /// [`Outcome::NONE`]): a `u32` payload, defined in every variant (a `bool` or `()` payload
    /// would leave bytes undefined, the very thing this type avoids).
    #[inline(always)]
    pub fn from(r: Result<u32, DropReason>) -> Outcome {
        match r {
            Ok(v) => Outcome(v & VALUE),
            Err(reason) => Outcome(ERR | reason as u32),
        }
    }

    /// Whether the body returned a value other than 0, or its drop reason.
    #[inline(always)]
    pub fn get(self) -> Result<bool, DropReason> {
        self.value().map(|v| v != 0)
    }

    /// From a body that returns a TC verdict (`TC_ACT_*`, -1 to 7).
    #[inline(always)]
    pub fn from_verdict(r: Result<i32, DropReason>) -> Outcome {
        Outcome::from(r.map(|v| (v + 1) as u32 & 0xff))
    }

    /// The verdict a body given to [`Outcome::from_verdict`] returned, or its drop reason.
    #[inline(always)]
    pub fn verdict(self) -> Result<i32, DropReason> {
        self.value().map(|v| v as i32 - 1)
    }

    /// The register as returned.
    #[inline(always)]
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// The value the body returned, or its drop reason.
    #[inline(always)]
    pub fn value(self) -> Result<u32, DropReason> {
        if self.0 & ERR == 0 {
            return Ok(self.0);
        }
        Err(DropReason::from_u32(self.0 & VALUE).unwrap_or(DropReason::Malformed))
    }
}
