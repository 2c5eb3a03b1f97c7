//! Multiplication and division: MUL and IMUL in their one-, two- and
//! three-operand forms, DIV and IDIV with the divide error (#DE) for a zero
//! divisor or a quotient that does not fit.
//!
//! The one-operand forms work on the accumulator pair of the operand size:
//! AX = AL * src (AH:AL / src for division), DX:AX, EDX:EAX, RDX:RAX.
//! Flags follow the manuals where defined (CF = OF = "the upper half
//! matters" for the multiplications) and, where the manuals leave them
//! undefined, what AMD processors give (checked against the host by the
//! differential test's strict mode): a product keeps SF, ZF, AF and PF; a
//! division keeps CF and OF, clears SF, ZF and PF and sets AF.

use super::access::Context;
use super::alu;
use super::cpu::{
    CpuState, GuestBus, RFLAGS_AF, RFLAGS_CF, RFLAGS_OF, RFLAGS_PF, RFLAGS_SF, RFLAGS_ZF,
};
use super::decode::Decoded;
use super::error::{EmulateError, Exception};
use iced_x86::Mnemonic;

/// The status flags after a product: CF and OF from `wide` (the upper
/// half is more than the low half's extension), the others kept from
/// `flags`.
fn product_flags(flags: u64, wide: bool) -> u64 {
    let kept = flags & (RFLAGS_SF | RFLAGS_ZF | RFLAGS_AF | RFLAGS_PF);
    if wide {
        kept | RFLAGS_CF | RFLAGS_OF
    } else {
        kept
    }
}

/// The status flags after a division.
fn quotient_flags(flags: u64) -> u64 {
    (flags & (RFLAGS_CF | RFLAGS_OF)) | RFLAGS_AF
}

/// The unsigned product of `a` and `b` of `size` bytes: (low, high).
pub(crate) fn mul_unsigned(a: u64, b: u64, size: usize) -> (u64, u64) {
    let m = alu::mask(size);
    let p = u128::from(a & m) * u128::from(b & m);
    let bits = size.clamp(1, 8) * 8;
    ((p as u64) & m, ((p >> bits) as u64) & m)
}

/// The signed product of `a` and `b` of `size` bytes: (low, high), each
/// truncated to `size` bytes.
pub(crate) fn mul_signed(a: u64, b: u64, size: usize) -> (u64, u64) {
    let m = alu::mask(size);
    let sa = i128::from(alu::sign_extend(a, size) as i64);
    let sb = i128::from(alu::sign_extend(b, size) as i64);
    let p = sa.wrapping_mul(sb) as u128;
    let bits = size.clamp(1, 8) * 8;
    ((p as u64) & m, ((p >> bits) as u64) & m)
}

/// Whether a signed product (low, high) needs the high half: it is not
/// the sign extension of the low half.
fn signed_wide(low: u64, high: u64, size: usize) -> bool {
    let ext = if (alu::sign_extend(low, size) as i64) < 0 {
        alu::mask(size)
    } else {
        0
    };
    high != ext
}

/// Unsigned division of the 2×`size`-byte dividend (high, low) by `divisor`:
/// (quotient, remainder), or `None` for #DE.
pub(crate) fn div_unsigned(high: u64, low: u64, divisor: u64, size: usize) -> Option<(u64, u64)> {
    let m = alu::mask(size);
    let bits = size.clamp(1, 8) * 8;
    let divisor = u128::from(divisor & m);
    if divisor == 0 {
        return None;
    }
    let dividend = (u128::from(high & m) << bits) | u128::from(low & m);
    let q = dividend / divisor;
    let r = dividend % divisor;
    (q <= u128::from(m)).then_some((q as u64, r as u64))
}

/// Signed division of the 2×`size`-byte dividend (high, low) by `divisor`:
/// (quotient, remainder) truncated to `size` bytes, or `None` for #DE.
pub(crate) fn div_signed(high: u64, low: u64, divisor: u64, size: usize) -> Option<(u64, u64)> {
    let m = alu::mask(size);
    let bits = size.clamp(1, 8) * 8;
    let divisor = i128::from(alu::sign_extend(divisor, size) as i64);
    if divisor == 0 {
        return None;
    }
    // The dividend, sign-extended from 2 × bits.
    let raw = (u128::from(high & m) << bits) | u128::from(low & m);
    let shift = 128 - 2 * bits;
    let dividend = ((raw << shift) as i128) >> shift;
    let q = dividend.checked_div(divisor)?;
    let r = dividend.checked_rem(divisor)?;
    let half = 1i128 << (bits - 1);
    if q < -half || q >= half {
        return None;
    }
    Some(((q as u64) & m, (r as u64) & m))
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// The accumulator pair of `size` bytes: (high, low). For bytes, AH
    /// and AL.
    fn accumulator_pair(&self, size: usize) -> (u64, u64) {
        if size == 1 {
            (self.read_gpr(0, 1, true), self.read_gpr(0, 1, false))
        } else {
            (self.read_gpr(2, size, false), self.read_gpr(0, size, false))
        }
    }

    /// Store (high, low) into the accumulator pair of `size` bytes.
    fn set_accumulator_pair(&mut self, size: usize, high: u64, low: u64) {
        if size == 1 {
            self.write_gpr(0, 2, false, (high << 8) | (low & 0xff));
        } else {
            self.write_gpr(0, size, false, low);
            self.write_gpr(2, size, false, high);
        }
    }

    /// MUL, IMUL, DIV, IDIV.
    pub fn mul_div(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let i = &d.instr;
        let m = i.mnemonic();
        if m == Mnemonic::Imul && i.op_count() > 1 {
            // IMUL r, r/m (r * r/m) and IMUL r, r/m, imm.
            let dst = self.operand(d, 0)?;
            let size = dst.size();
            let b = self.read_operand(&self.operand(d, 1)?)?;
            let a = if i.op_count() > 2 {
                self.read_operand(&self.operand(d, 2)?)?
            } else {
                self.read_operand(&dst)?
            };
            let (low, high) = mul_signed(a, b, size);
            self.write_operand(d, &dst, low)?;
            let flags = self.state.rflags();
            let f = product_flags(flags, signed_wide(low, high, size));
            let flags = alu::merge_status(flags, f);
            self.state.set_rflags(flags);
            return Ok(());
        }
        let src = self.operand(d, 0)?;
        let size = src.size();
        let v = self.read_operand(&src)?;
        let (high, low) = self.accumulator_pair(size);
        match m {
            Mnemonic::Mul | Mnemonic::Imul => {
                let (lo, hi) = if m == Mnemonic::Mul {
                    mul_unsigned(low, v, size)
                } else {
                    mul_signed(low, v, size)
                };
                let wide = if m == Mnemonic::Mul {
                    hi != 0
                } else {
                    signed_wide(lo, hi, size)
                };
                self.set_accumulator_pair(size, hi, lo);
                let flags = self.state.rflags();
                let flags = alu::merge_status(flags, product_flags(flags, wide));
                self.state.set_rflags(flags);
            }
            _ => {
                let result = if m == Mnemonic::Div {
                    div_unsigned(high, low, v, size)
                } else {
                    div_signed(high, low, v, size)
                };
                let (q, r) = result.ok_or(Exception::DivideError)?;
                self.set_accumulator_pair(size, r, q);
                let flags = self.state.rflags();
                let flags = alu::merge_status(flags, quotient_flags(flags));
                self.state.set_rflags(flags);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_division_faults_on_zero_and_overflow() {
        assert_eq!(div_unsigned(0, 7, 0, 4), None);
        assert_eq!(div_unsigned(1, 0, 1, 4), None);
        assert_eq!(div_unsigned(0, 7, 2, 4), Some((3, 1)));
        assert_eq!(div_unsigned(1, 0, 2, 8), Some((1 << 63, 0)));
    }

    #[test]
    fn signed_division_faults_on_the_one_overflowing_quotient() {
        // -128 / -1 in AX / r8 does not fit in AL.
        assert_eq!(div_signed(0xff, 0x80, 0xff, 1), None);
        assert_eq!(div_signed(u64::MAX, 1 << 63, u64::MAX, 8), None);
        // -7 / 2 = -3 rem -1.
        assert_eq!(div_signed(0xffff, 0xfff9, 2, 2), Some((0xfffd, 0xffff)));
    }

    #[test]
    fn products_set_carry_and_overflow_when_the_high_half_matters() {
        assert_eq!(mul_unsigned(0xff, 0xff, 1), (0x01, 0xfe));
        assert_eq!(mul_signed(0xff, 0xff, 1), (0x01, 0x00));
        assert!(!signed_wide(0x01, 0, 1));
        assert!(signed_wide(0x80, 0, 1));
        assert!(!signed_wide(0x80, 0xff, 1));
    }
}
