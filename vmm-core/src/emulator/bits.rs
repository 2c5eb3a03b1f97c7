//! Bit scans and counts (BSF, BSR, TZCNT, LZCNT, POPCNT), double-precision
//! shifts (SHLD, SHRD) and the byte-swapping move MOVBE.
//!
//! TZCNT, LZCNT, POPCNT and MOVBE are carried out as the instructions the
//! decoder names: the vCPU's CPUID passes the host's BMI1, ABM/LZCNT,
//! POPCNT and MOVBE bits through, and these exits only happen on hosts that
//! run the guest's instructions natively first.

use super::access::Context;
use super::alu;
use super::cpu::{
    CpuState, GuestBus, RFLAGS_AF, RFLAGS_CF, RFLAGS_OF, RFLAGS_PF, RFLAGS_SF, RFLAGS_ZF,
};
use super::decode::Decoded;
use super::error::EmulateError;
use super::operand::Operand;
use iced_x86::Mnemonic;

/// PF, ZF and SF of a `size`-byte result.
fn result_flags(r: u64, size: usize) -> u64 {
    let mut f = 0;
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= RFLAGS_PF;
    }
    if r & alu::mask(size) == 0 {
        f |= RFLAGS_ZF;
    }
    if (r >> (size.clamp(1, 8) * 8 - 1)) & 1 != 0 {
        f |= RFLAGS_SF;
    }
    f
}

/// SHLD (`left`) or SHRD of `dst` with bits from `src`, `size` bytes, by
/// `count` (masked as hardware masks it). `None` when the masked count is
/// zero (nothing changes, not even the flags). Counts beyond the operand
/// size (16-bit operands only) shift through the 2×16-bit concatenation
/// repeated, which is what current processors give for the undefined
/// result.
pub(crate) fn double_shift(
    left: bool,
    dst: u64,
    src: u64,
    count: u64,
    size: usize,
) -> Option<(u64, u64)> {
    let size = size.clamp(2, 8);
    let bits = (size * 8) as u32;
    let m = alu::mask(size);
    let (dst, src) = (dst & m, src & m);
    let c = (count & if size == 8 { 0x3f } else { 0x1f }) as u32;
    if c == 0 {
        return None;
    }
    // The operands as one wide value: dst:src for a left shift, src:dst
    // for a right one (and for 16 bits, once more, to cover counts up to 31).
    let (r, cf) = if left {
        let wide = (u128::from(dst) << bits) | u128::from(src);
        let wide = if bits == 16 {
            (wide << 32) | wide
        } else {
            wide
        };
        let total = if bits == 16 { 64 } else { 2 * bits };
        let shifted = wide << c;
        let r = (shifted >> (total - bits)) as u64 & m;
        let cf = (wide >> (total - c)) & 1 != 0;
        (r, cf)
    } else {
        let wide = (u128::from(src) << bits) | u128::from(dst);
        let wide = if bits == 16 {
            (wide << 32) | wide
        } else {
            wide
        };
        let r = (wide >> c) as u64 & m;
        let cf = (wide >> (c - 1)) & 1 != 0;
        (r, cf)
    };
    // OF is defined for one-bit counts (the sign changed); for longer
    // counts, and AF always, the values are what AMD processors give: OF
    // compares the result's top bit with the bit next to it on its way in
    // (CF for SHLD, the result's second bit for SHRD), AF is set. For a
    // one-bit count both readings of OF agree.
    let bit = |v: u64, n: u32| (v >> n) & 1 != 0;
    let next = if left { cf } else { bit(r, bits - 2) };
    let mut f = result_flags(r, size) | RFLAGS_AF;
    if cf {
        f |= RFLAGS_CF;
    }
    if bit(r, bits - 1) != next {
        f |= RFLAGS_OF;
    }
    Some((r, f))
}

impl<S: CpuState, B: GuestBus> Context<'_, S, B> {
    /// BSF, BSR, TZCNT, LZCNT, POPCNT.
    pub fn bit_scan(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let dst = self.operand(d, 0)?;
        let size = dst.size();
        let bits = (size * 8) as u64;
        let v = self.read_operand(&self.operand(d, 1)?)? & alu::mask(size);
        let flags = self.state.rflags();
        // Without the instruction the CPU runs the older one the bytes
        // also encode (the F3 prefix ignored).
        let mnemonic = match d.instr.mnemonic() {
            Mnemonic::Tzcnt if !self.instructions.tzcnt => Mnemonic::Bsf,
            Mnemonic::Lzcnt if !self.instructions.lzcnt => Mnemonic::Bsr,
            m => m,
        };
        let (result, status) = match mnemonic {
            m @ (Mnemonic::Bsf | Mnemonic::Bsr) => {
                if v == 0 {
                    // The destination keeps its value; ZF says why, the
                    // other flags are kept (AMD's documented behaviour).
                    self.state.set_rflags(flags | RFLAGS_ZF);
                    return Ok(());
                }
                let r = if m == Mnemonic::Bsf {
                    u64::from(v.trailing_zeros())
                } else {
                    63 - u64::from(v.leading_zeros())
                };
                (r, flags & !RFLAGS_ZF)
            }
            m @ (Mnemonic::Tzcnt | Mnemonic::Lzcnt) => {
                let r = if v == 0 {
                    bits
                } else if m == Mnemonic::Tzcnt {
                    u64::from(v.trailing_zeros())
                } else {
                    u64::from(v.leading_zeros()) - (64 - bits)
                };
                // OF is kept, SF, AF and PF cleared (undefined in the
                // manuals; what processors give).
                let mut f = flags & RFLAGS_OF;
                if v == 0 {
                    f |= RFLAGS_CF;
                }
                if r == 0 {
                    f |= RFLAGS_ZF;
                }
                (r, f)
            }
            _ => {
                let r = u64::from(v.count_ones());
                (r, if v == 0 { RFLAGS_ZF } else { 0 })
            }
        };
        self.write_operand(d, &dst, result)?;
        self.state.set_rflags(alu::merge_status(flags, status));
        Ok(())
    }

    /// SHLD, SHRD.
    pub fn shift_double(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let left = d.instr.mnemonic() == Mnemonic::Shld;
        let dst = self.operand(d, 0)?;
        let src = self.read_operand(&self.operand(d, 1)?)?;
        let count = self.read_operand(&self.operand(d, 2)?)?;
        let place = self.bind(d, &dst)?;
        let a = self.load(&place)?;
        if let Some((r, f)) = double_shift(left, a, src, count, dst.size()) {
            self.store(&place, a, r, false)?;
            let flags = alu::merge_status(self.state.rflags(), f);
            self.state.set_rflags(flags);
        }
        Ok(())
    }

    /// MOVBE: a load or store with the bytes reversed.
    pub fn move_swapped(&mut self, d: &Decoded) -> Result<(), EmulateError> {
        let dst = self.operand(d, 0)?;
        let src = self.operand(d, 1)?;
        let size = dst.size();
        if !matches!(
            (dst, src),
            (Operand::Gpr { .. }, Operand::Mem { .. }) | (Operand::Mem { .. }, Operand::Gpr { .. })
        ) {
            return Err(self.unsupported(d));
        }
        let v = self.read_operand(&src)?;
        let swapped = v.swap_bytes() >> (64 - size * 8);
        self.write_operand(d, &dst, swapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_shifts_take_bits_from_the_source() {
        assert_eq!(
            double_shift(true, 0x1234, 0xabcd, 4, 2).map(|r| r.0),
            Some(0x234a)
        );
        assert_eq!(
            double_shift(false, 0x1234, 0xabcd, 4, 2).map(|r| r.0),
            Some(0xd123)
        );
        assert_eq!(double_shift(true, 1, 2, 0, 4), None);
        assert_eq!(double_shift(true, 1, 2, 64, 8), None);
        // CF is the last bit shifted out.
        let (_, f) = double_shift(true, 0x8000_0000, 0, 1, 4).unwrap();
        assert_ne!(f & RFLAGS_CF, 0);
    }
}
