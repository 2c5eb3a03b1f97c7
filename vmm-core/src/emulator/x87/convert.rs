//! Conversions an x87 store makes from an 80-bit register: to single and
//! double precision (FST), to integers (FIST, FISTTP), with the rounding
//! the control word selects and the exception flags and C1 the hardware
//! reports. Pure integer arithmetic; nothing here can panic.

/// Exception flags in the status word's layout.
pub const IE: u16 = 1 << 0;
/// Overflow.
pub const OE: u16 = 1 << 3;
/// Underflow.
pub const UE: u16 = 1 << 4;
/// Precision (inexact).
pub const PE: u16 = 1 << 5;

/// Rounding control (FCW bits 11:10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// To nearest, ties to even.
    Nearest,
    /// Toward negative infinity.
    Down,
    /// Toward positive infinity.
    Up,
    /// Toward zero.
    Zero,
}

impl Rounding {
    /// The rounding control of control word `fcw`.
    pub fn of(fcw: u16) -> Self {
        match (fcw >> 10) & 3 {
            0 => Rounding::Nearest,
            1 => Rounding::Down,
            2 => Rounding::Up,
            _ => Rounding::Zero,
        }
    }
}

/// What a conversion produced: the bits to store, the exception flags it
/// raised, and C1 (the result was rounded up in magnitude).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Converted {
    /// The destination's bits (low `width` bits used).
    pub bits: u64,
    /// IE, OE, UE, PE as raised.
    pub flags: u16,
    /// The rounding increased the magnitude.
    pub rounded_up: bool,
    /// Overflow or underflow whose exception is unmasked (`masks` said
    /// so): the destination must not be written.
    pub suppress_store: bool,
}

/// An 80-bit register's fields.
#[derive(Clone, Copy, Debug)]
struct Extended {
    sign: bool,
    exp: u16,
    mant: u64,
}

impl Extended {
    fn of(raw: &[u8; 10]) -> Self {
        let mut m = [0u8; 8];
        m.copy_from_slice(&raw[..8]);
        let se = u16::from_le_bytes([raw[8], raw[9]]);
        Extended {
            sign: se & 0x8000 != 0,
            exp: se & 0x7fff,
            mant: u64::from_le_bytes(m),
        }
    }
}

/// Classes of an 80-bit value as the x87 sees it.
enum Class {
    Zero,
    /// Finite, nonzero: value = mant * 2^(exp2) with mant != 0.
    Finite {
        mant: u64,
        exp2: i32,
    },
    Infinity,
    QuietNan,
    SignalingNan,
    /// Pseudo-NaN, pseudo-infinity, unnormal: invalid operands.
    Unsupported,
}

fn classify(x: Extended) -> Class {
    let integer = x.mant >> 63 != 0;
    match x.exp {
        0x7fff => {
            if !integer {
                Class::Unsupported
            } else if x.mant << 1 == 0 {
                Class::Infinity
            } else if x.mant & (1 << 62) != 0 {
                Class::QuietNan
            } else {
                Class::SignalingNan
            }
        }
        0 => {
            if x.mant == 0 {
                Class::Zero
            } else {
                // Denormals and pseudo-denormals both scale by 2^(1-16383).
                Class::Finite {
                    mant: x.mant,
                    exp2: 1 - 16383 - 63,
                }
            }
        }
        e => {
            if !integer {
                Class::Unsupported
            } else {
                Class::Finite {
                    mant: x.mant,
                    exp2: i32::from(e) - 16383 - 63,
                }
            }
        }
    }
}

/// Round `mant` (as a value with `drop` low bits to discard) in direction
/// `rc` for sign `sign`: the kept value, whether anything was discarded,
/// and whether the kept value was incremented.
fn round_bits(mant: u128, drop: u32, rc: Rounding, sign: bool) -> (u128, bool, bool) {
    if drop == 0 {
        return (mant, false, false);
    }
    if drop >= 128 {
        let inexact = mant != 0;
        let up = inexact
            && match rc {
                Rounding::Up => !sign,
                Rounding::Down => sign,
                _ => false,
            };
        return (u128::from(up), inexact, up);
    }
    let kept = mant >> drop;
    let rest = mant & ((1u128 << drop) - 1);
    let half = 1u128 << (drop - 1);
    if rest == 0 {
        return (kept, false, false);
    }
    let up = match rc {
        Rounding::Nearest => rest > half || (rest == half && kept & 1 != 0),
        Rounding::Zero => false,
        Rounding::Up => !sign,
        Rounding::Down => sign,
    };
    (kept + u128::from(up), true, up)
}

/// A binary floating-point format to store into.
#[derive(Clone, Copy)]
pub struct FloatFormat {
    /// Significand bits, the implicit one included (24, 53).
    pub precision: u32,
    /// Exponent field bits (8, 11).
    pub exp_bits: u32,
}

/// Single precision.
pub const SINGLE: FloatFormat = FloatFormat {
    precision: 24,
    exp_bits: 8,
};
/// Double precision.
pub const DOUBLE: FloatFormat = FloatFormat {
    precision: 53,
    exp_bits: 11,
};

impl FloatFormat {
    fn bias(self) -> i32 {
        (1 << (self.exp_bits - 1)) - 1
    }
    fn frac_bits(self) -> u32 {
        self.precision - 1
    }
    fn sign_bit(self) -> u64 {
        1 << (self.exp_bits + self.frac_bits())
    }
    fn exp_field_max(self) -> u64 {
        (1 << self.exp_bits) - 1
    }
    fn infinity(self, sign: bool) -> u64 {
        (self.exp_field_max() << self.frac_bits()) | if sign { self.sign_bit() } else { 0 }
    }
    fn largest(self, sign: bool) -> u64 {
        self.infinity(sign) - 1
    }
    /// The default (indefinite) quiet NaN: sign set, quiet bit set.
    pub fn indefinite(self) -> u64 {
        self.infinity(true) | (1 << (self.frac_bits() - 1))
    }
}

/// Store register `raw` as a `format` float under control word `fcw`
/// (rounding control and the exception masks; precision control does not
/// apply to stores).
pub fn to_float(raw: &[u8; 10], format: FloatFormat, fcw: u16) -> Converted {
    let x = Extended::of(raw);
    let rc = Rounding::of(fcw);
    let sign_bits = if x.sign { format.sign_bit() } else { 0 };
    let plain = |bits| Converted {
        bits,
        flags: 0,
        rounded_up: false,
        suppress_store: false,
    };
    match classify(x) {
        Class::Zero => plain(sign_bits),
        Class::Infinity => plain(format.infinity(x.sign)),
        Class::QuietNan | Class::SignalingNan => {
            let signaling = matches!(classify(x), Class::SignalingNan);
            // The fraction's top bits, quieted.
            let frac = (x.mant << 1) >> (64 - format.frac_bits());
            let quiet = 1 << (format.frac_bits() - 1);
            Converted {
                bits: format.infinity(x.sign) | frac | quiet,
                flags: if signaling { IE } else { 0 },
                rounded_up: false,
                suppress_store: false,
            }
        }
        Class::Unsupported => Converted {
            bits: format.indefinite(),
            flags: IE,
            rounded_up: false,
            suppress_store: false,
        },
        Class::Finite { mant, exp2 } => {
            // Normalise: the top bit of `mant` at 63.
            let lz = mant.leading_zeros();
            let mant = mant << lz;
            let exp2 = exp2 - lz as i32;
            // value = 1.xxx * 2^e with e = exp2 + 63.
            let e = exp2 + 63;
            let emin = 1 - format.bias();
            let emax = format.bias();
            let p = format.precision;
            // Tininess after rounding with an unbounded exponent.
            let (unbounded, _, _) = round_bits(u128::from(mant), 64 - p, rc, x.sign);
            let unbounded_e = if unbounded >> p != 0 { e + 1 } else { e };
            let tiny = unbounded_e < emin;
            // The stored rounding: subnormal results lose more bits.
            let extra = if e < emin { (emin - e) as u32 } else { 0 };
            let drop = (64 - p).saturating_add(extra);
            let (mut kept, inexact, up) = round_bits(u128::from(mant), drop, rc, x.sign);
            let mut e = e;
            if extra == 0 && kept >> p != 0 {
                kept >>= 1;
                e += 1;
            }
            let masks = fcw & 0x3f;
            if e > emax {
                // Overflow.
                let unmasked = masks & OE == 0;
                let bits = match (rc, x.sign) {
                    (Rounding::Nearest, _) => format.infinity(x.sign),
                    (Rounding::Zero, _) => format.largest(x.sign),
                    (Rounding::Up, false) | (Rounding::Down, true) => format.infinity(x.sign),
                    _ => format.largest(x.sign),
                };
                let rounded_up = matches!(
                    (rc, x.sign),
                    (Rounding::Nearest, _) | (Rounding::Up, false) | (Rounding::Down, true)
                );
                return Converted {
                    bits,
                    flags: OE | PE,
                    rounded_up,
                    suppress_store: unmasked,
                };
            }
            let mut flags = 0;
            if inexact {
                flags |= PE;
            }
            if tiny {
                if masks & UE == 0 {
                    // Unmasked underflow: flagged whether or not exact,
                    // and nothing is stored.
                    return Converted {
                        bits: 0,
                        flags: flags | UE,
                        rounded_up: up,
                        suppress_store: true,
                    };
                }
                if inexact {
                    flags |= UE;
                }
            }
            // Encode: a subnormal (or a value that rounded up to the
            // smallest normal) has its implicit bit in `kept`.
            let frac_mask = (1u64 << format.frac_bits()) - 1;
            let kept = kept as u64;
            let bits = if extra > 0 {
                // Subnormal: exponent field 0, or 1 if rounding carried
                // into the implicit bit.
                kept
            } else {
                let field = (e + format.bias()) as u64;
                (field << format.frac_bits()) | (kept & frac_mask)
            };
            Converted {
                bits: bits | sign_bits,
                flags,
                rounded_up: up,
                suppress_store: false,
            }
        }
    }
}

/// Store register `raw` as a signed integer of `bits` (16, 32, 64) bits,
/// rounded as `fcw` says or, with `truncate` (FISTTP), toward zero. Out of
/// range, NaN, infinity or an invalid operand give IE and the integer
/// indefinite (the most negative value).
pub fn to_integer(raw: &[u8; 10], bits: u32, fcw: u16, truncate: bool) -> Converted {
    let x = Extended::of(raw);
    let rc = if truncate {
        Rounding::Zero
    } else {
        Rounding::of(fcw)
    };
    let indefinite = 1u64 << (bits - 1);
    let invalid = Converted {
        bits: indefinite,
        flags: IE,
        rounded_up: false,
        suppress_store: false,
    };
    match classify(x) {
        Class::Zero => Converted {
            bits: 0,
            flags: 0,
            rounded_up: false,
            suppress_store: false,
        },
        Class::Finite { mant, exp2 } => {
            // value = mant * 2^exp2; integer part after rounding.
            let (magnitude, inexact, up) = if exp2 >= 0 {
                if exp2 >= 64 || (mant.leading_zeros() as i32) < exp2 {
                    return invalid;
                }
                (u128::from(mant) << exp2, false, false)
            } else {
                round_bits(u128::from(mant), (-exp2) as u32, rc, x.sign)
            };
            let limit = if x.sign {
                1u128 << (bits - 1)
            } else {
                (1u128 << (bits - 1)) - 1
            };
            if magnitude > limit {
                return invalid;
            }
            let value = if x.sign {
                (magnitude as u64).wrapping_neg()
            } else {
                magnitude as u64
            };
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            Converted {
                bits: value & mask,
                flags: if inexact { PE } else { 0 },
                rounded_up: up,
                suppress_store: false,
            }
        }
        _ => invalid,
    }
}
