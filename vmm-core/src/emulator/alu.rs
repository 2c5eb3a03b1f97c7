//! Integer arithmetic with the status flags hardware computes.
//!
//! Values are held in `u64` and truncated to the operand size (1, 2, 4 or
//! 8 bytes). Flags a manual calls undefined are given the values current
//! Intel and AMD processors produce where they agree (AF cleared by logic
//! operations); the differential test masks the ones that differ between
//! processor generations.

use super::cpu::{RFLAGS_AF, RFLAGS_CF, RFLAGS_OF, RFLAGS_PF, RFLAGS_SF, RFLAGS_STATUS, RFLAGS_ZF};
use iced_x86::Mnemonic;

/// A two-operand arithmetic or logic operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AluOp {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
}

/// All ones in the low `size` bytes.
pub(crate) fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

fn sign_bit(size: usize) -> u64 {
    1u64 << (size.clamp(1, 8) * 8 - 1)
}

/// Sign-extend the low `size` bytes of `v`.
pub(crate) fn sign_extend(v: u64, size: usize) -> u64 {
    let bits = size.clamp(1, 8) * 8;
    let shift = 64 - bits;
    (((v << shift) as i64) >> shift) as u64
}

/// PF, ZF and SF for `result` of `size` bytes.
fn result_flags(result: u64, size: usize) -> u64 {
    let mut f = 0;
    if (result as u8).count_ones().is_multiple_of(2) {
        f |= RFLAGS_PF;
    }
    if result & mask(size) == 0 {
        f |= RFLAGS_ZF;
    }
    if result & sign_bit(size) != 0 {
        f |= RFLAGS_SF;
    }
    f
}

/// `a + b + carry`, with all six status flags.
fn add(a: u64, b: u64, carry: bool, size: usize) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let wide = u128::from(a) + u128::from(b) + u128::from(carry);
    let r = (wide as u64) & m;
    let mut f = result_flags(r, size);
    if wide > u128::from(m) {
        f |= RFLAGS_CF;
    }
    if (a ^ r) & (b ^ r) & sign_bit(size) != 0 {
        f |= RFLAGS_OF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= RFLAGS_AF;
    }
    (r, f)
}

/// `a - b - borrow`, with all six status flags.
fn sub(a: u64, b: u64, borrow: bool, size: usize) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let r = a.wrapping_sub(b).wrapping_sub(u64::from(borrow)) & m;
    let mut f = result_flags(r, size);
    if u128::from(a) < u128::from(b) + u128::from(borrow) {
        f |= RFLAGS_CF;
    }
    if (a ^ b) & (a ^ r) & sign_bit(size) != 0 {
        f |= RFLAGS_OF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= RFLAGS_AF;
    }
    (r, f)
}

/// Apply `op`; returns the result and the new status flags (the six
/// `RFLAGS_STATUS` bits only). `flags` supplies CF for ADC and SBB.
pub(crate) fn binary(op: AluOp, a: u64, b: u64, flags: u64, size: usize) -> (u64, u64) {
    let cf = flags & RFLAGS_CF != 0;
    match op {
        AluOp::Add => add(a, b, false, size),
        AluOp::Adc => add(a, b, cf, size),
        AluOp::Sub => sub(a, b, false, size),
        AluOp::Sbb => sub(a, b, cf, size),
        AluOp::And | AluOp::Or | AluOp::Xor => {
            let r = match op {
                AluOp::And => a & b,
                AluOp::Or => a | b,
                _ => a ^ b,
            } & mask(size);
            (r, result_flags(r, size))
        }
    }
}

/// INC or DEC: like ADD/SUB 1 but CF is kept from `flags`.
pub(crate) fn inc_dec(a: u64, dec: bool, flags: u64, size: usize) -> (u64, u64) {
    let (r, f) = if dec {
        sub(a, 1, false, size)
    } else {
        add(a, 1, false, size)
    };
    (r, (f & !RFLAGS_CF) | (flags & RFLAGS_CF))
}

/// NEG: `0 - a`, CF set unless `a` is zero.
pub(crate) fn neg(a: u64, size: usize) -> (u64, u64) {
    sub(0, a, false, size)
}

/// Replace the status flags of `rflags` with `status`.
pub(crate) fn merge_status(rflags: u64, status: u64) -> u64 {
    (rflags & !RFLAGS_STATUS) | (status & RFLAGS_STATUS)
}

/// Evaluate condition code `cc` (the low nibble of the Jcc/SETcc opcode).
pub(crate) fn condition(cc: u8, rflags: u64) -> bool {
    let cf = rflags & RFLAGS_CF != 0;
    let zf = rflags & RFLAGS_ZF != 0;
    let sf = rflags & RFLAGS_SF != 0;
    let of = rflags & RFLAGS_OF != 0;
    let pf = rflags & RFLAGS_PF != 0;
    let v = match cc >> 1 {
        0 => of,
        1 => cf,
        2 => zf,
        3 => cf || zf,
        4 => sf,
        5 => pf,
        6 => sf != of,
        _ => zf || sf != of,
    };
    v != (cc & 1 != 0)
}

/// The condition code ([`condition`]'s `cc`) of a Jcc, `None` for any
/// other mnemonic.
pub(crate) fn jcc_condition(m: Mnemonic) -> Option<u8> {
    Some(match m {
        Mnemonic::Jo => 0,
        Mnemonic::Jno => 1,
        Mnemonic::Jb => 2,
        Mnemonic::Jae => 3,
        Mnemonic::Je => 4,
        Mnemonic::Jne => 5,
        Mnemonic::Jbe => 6,
        Mnemonic::Ja => 7,
        Mnemonic::Js => 8,
        Mnemonic::Jns => 9,
        Mnemonic::Jp => 10,
        Mnemonic::Jnp => 11,
        Mnemonic::Jl => 12,
        Mnemonic::Jge => 13,
        Mnemonic::Jle => 14,
        Mnemonic::Jg => 15,
        _ => return None,
    })
}

/// The condition code ([`condition`]'s `cc`) of a SETcc, `None` for any
/// other mnemonic.
pub(crate) fn setcc_condition(m: Mnemonic) -> Option<u8> {
    Some(match m {
        Mnemonic::Seto => 0,
        Mnemonic::Setno => 1,
        Mnemonic::Setb => 2,
        Mnemonic::Setae => 3,
        Mnemonic::Sete => 4,
        Mnemonic::Setne => 5,
        Mnemonic::Setbe => 6,
        Mnemonic::Seta => 7,
        Mnemonic::Sets => 8,
        Mnemonic::Setns => 9,
        Mnemonic::Setp => 10,
        Mnemonic::Setnp => 11,
        Mnemonic::Setl => 12,
        Mnemonic::Setge => 13,
        Mnemonic::Setle => 14,
        Mnemonic::Setg => 15,
        _ => return None,
    })
}

/// The condition code ([`condition`]'s `cc`) of a CMOVcc, `None` for any
/// other mnemonic.
pub(crate) fn cmovcc_condition(m: Mnemonic) -> Option<u8> {
    Some(match m {
        Mnemonic::Cmovo => 0,
        Mnemonic::Cmovno => 1,
        Mnemonic::Cmovb => 2,
        Mnemonic::Cmovae => 3,
        Mnemonic::Cmove => 4,
        Mnemonic::Cmovne => 5,
        Mnemonic::Cmovbe => 6,
        Mnemonic::Cmova => 7,
        Mnemonic::Cmovs => 8,
        Mnemonic::Cmovns => 9,
        Mnemonic::Cmovp => 10,
        Mnemonic::Cmovnp => 11,
        Mnemonic::Cmovl => 12,
        Mnemonic::Cmovge => 13,
        Mnemonic::Cmovle => 14,
        Mnemonic::Cmovg => 15,
        _ => return None,
    })
}

/// A shift or rotate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShiftOp {
    Rol,
    Ror,
    Rcl,
    Rcr,
    Shl,
    Shr,
    Sar,
}

/// Shift or rotate `a` (of `size` bytes) by `count` (masked as hardware
/// masks it). `None` when the masked count is zero: nothing changes, not
/// even the flags. Otherwise the result and the new status flags; OF is
/// given its one-bit-count value (the manuals leave it undefined for other
/// counts), rotates keep SF, ZF, AF and PF.
pub(crate) fn shift(
    op: ShiftOp,
    a: u64,
    count: u64,
    flags: u64,
    size: usize,
) -> Option<(u64, u64)> {
    let size = size.clamp(1, 8);
    let bits = (size * 8) as u32;
    let m = mask(size);
    let a = a & m;
    let c = (count & if size == 8 { 0x3f } else { 0x1f }) as u32;
    if c == 0 {
        return None;
    }
    let cf_in = flags & RFLAGS_CF != 0;
    let msb = |v: u64| (v >> (bits - 1)) & 1 != 0;
    let keep = flags & (RFLAGS_SF | RFLAGS_ZF | RFLAGS_AF | RFLAGS_PF);
    let with = |mut f: u64, cf: bool, of: bool| {
        if cf {
            f |= RFLAGS_CF;
        }
        if of {
            f |= RFLAGS_OF;
        }
        f
    };
    Some(match op {
        ShiftOp::Shl => {
            let r = a.checked_shl(c).unwrap_or(0) & m;
            let cf = c <= bits && (a >> (bits - c)) & 1 != 0;
            (r, with(result_flags(r, size), cf, msb(r) != cf))
        }
        ShiftOp::Shr => {
            let r = a.checked_shr(c).unwrap_or(0);
            let cf = (a >> (c - 1)) & 1 != 0;
            (r, with(result_flags(r, size), cf, msb(a)))
        }
        ShiftOp::Sar => {
            let s = sign_extend(a, size) as i64;
            let r = ((s >> c.min(63)) as u64) & m;
            let cf = (s >> (c - 1).min(63)) & 1 != 0;
            (r, with(result_flags(r, size), cf, false))
        }
        ShiftOp::Rol => {
            let k = c % bits;
            let r = if k == 0 {
                a
            } else {
                ((a << k) | (a >> (bits - k))) & m
            };
            let cf = r & 1 != 0;
            (r, with(keep, cf, msb(r) != cf))
        }
        ShiftOp::Ror => {
            let k = c % bits;
            let r = if k == 0 {
                a
            } else {
                ((a >> k) | (a << (bits - k))) & m
            };
            let second = (r >> (bits - 2)) & 1 != 0;
            (r, with(keep, msb(r), msb(r) != second))
        }
        ShiftOp::Rcl | ShiftOp::Rcr => {
            let width = bits + 1;
            let k = c % width;
            let wide_mask = (1u128 << width) - 1;
            let v = (u128::from(cf_in) << bits) | u128::from(a);
            let rotated = if k == 0 {
                v
            } else if op == ShiftOp::Rcl {
                ((v << k) | (v >> (width - k))) & wide_mask
            } else {
                ((v >> k) | (v << (width - k))) & wide_mask
            };
            let r = (rotated as u64) & m;
            let cf = (rotated >> bits) & 1 != 0;
            let of = if op == ShiftOp::Rcl {
                msb(r) != cf
            } else {
                msb(a) != cf_in
            };
            (r, with(keep, cf, of))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;

    /// The suffix of each condition code, in order (`o` = 0 ... `g` = 15).
    const SUFFIXES: [&str; 16] = [
        "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
    ];

    /// Jcc, SETcc and CMOVcc name their sixteen conditions alike, and each
    /// table gives exactly its own sixteen mnemonics the code of their
    /// suffix.
    #[test]
    fn condition_tables_agree_with_the_mnemonics_names() {
        type Table = fn(Mnemonic) -> Option<u8>;
        let tables: [(&str, Table); 3] = [
            ("J", jcc_condition),
            ("Set", setcc_condition),
            ("Cmov", cmovcc_condition),
        ];
        for (prefix, table) in tables {
            let mut found = 0;
            for m in Mnemonic::values() {
                let name: String = format!("{m:?}").to_lowercase();
                let expected = SUFFIXES
                    .iter()
                    .position(|s| name == format!("{}{s}", prefix.to_lowercase()));
                assert_eq!(
                    table(m).map(usize::from),
                    expected,
                    "{m:?} in the {prefix}cc table"
                );
                found += usize::from(expected.is_some());
            }
            assert_eq!(found, 16, "{prefix}cc");
        }
    }
}
