//! What a BPF function (one not inlined) returns: a `Result<bool, DropReason>` in one fully
//! defined register. Returned as an enum, its unused bits are undefined and LLVM may fill them
//! from any register — one that held a pointer, say — and the verifier refuses arithmetic on
//! pointers, even when the result is never used.

use netfast_common::DropReason;

const ERR: u32 = 0x100;

#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Outcome(u32);

impl Outcome {
    /// From a body that returns `Ok(0)` for false and `Ok(1)` for true: a `u32` payload,
    /// defined in every variant (a `bool` or `()` payload would leave bytes undefined, the
    /// very thing this type avoids).
    #[inline(always)]
    pub fn from(r: Result<u32, DropReason>) -> Outcome {
        match r {
            Ok(v) => Outcome(v & 1),
            Err(reason) => Outcome(ERR | reason as u32),
        }
    }

    #[inline(always)]
    pub fn get(self) -> Result<bool, DropReason> {
        if self.0 & ERR == 0 {
            return Ok(self.0 != 0);
        }
        Err(DropReason::from_u32(self.0 & !ERR).unwrap_or(DropReason::Malformed))
    }
}
