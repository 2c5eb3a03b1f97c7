//! Memory sizes as people write them: `512M`, `1G`, `1536MiB`, `65536K`,
//! or plain bytes.

use std::fmt;

/// Why a size did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Nothing was given.
    Empty,
    /// Not a number with an optional K/M/G suffix.
    Invalid(String),
    /// More than 64 bits of bytes.
    Overflow(String),
}

impl std::error::Error for SizeError {}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::Empty => write!(f, "empty size: write e.g. 512M or 1G"),
            SizeError::Invalid(s) => write!(
                f,
                "'{s}' is not a size: write a number with K, M or G (e.g. 512M)"
            ),
            SizeError::Overflow(s) => write!(f, "'{s}' is too large"),
        }
    }
}

/// Parse a size in bytes. Suffixes K, M, G, T (optionally followed by `iB`
/// or `B`) are powers of 1024; no suffix means bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    parse_size_in(text, 0)
}

/// Parse a size in bytes where a number without a suffix counts units of
/// `1 << default_shift` bytes (20: MiB, as QEMU's `-m 512`). `B` after
/// the number still means bytes.
pub fn parse_size_in(text: &str, default_shift: u32) -> Result<u64, SizeError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    if num.is_empty() {
        return Err(SizeError::Invalid(t.into()));
    }
    let value: u64 = num.parse().map_err(|_| SizeError::Overflow(t.into()))?;
    let unit = suffix.trim_start();
    let unit = unit
        .strip_suffix("iB")
        .or_else(|| unit.strip_suffix("ib"))
        .or_else(|| unit.strip_suffix('B').filter(|u| !u.is_empty()))
        .unwrap_or(unit);
    let shift = match unit {
        "" if suffix.is_empty() => default_shift,
        "" | "B" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(SizeError::Invalid(t.into())),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(t.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_and_without_units() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size(" 2g "), Ok(2 << 30));
        assert_eq!(parse_size("65536K"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
    }

    #[test]
    fn a_bare_number_counts_the_default_unit() {
        assert_eq!(parse_size_in("512", 20), Ok(512 << 20));
        assert_eq!(parse_size_in("512M", 20), Ok(512 << 20));
        assert_eq!(parse_size_in("1G", 20), Ok(1 << 30));
        assert_eq!(parse_size_in("4096B", 20), Ok(4096));
        assert_eq!(parse_size_in("65536K", 20), Ok(64 << 20));
        assert!(matches!(
            parse_size_in("99999999999999", 20),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn nonsense_is_refused_with_the_text() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        for bad in ["M", "12X", "1.5G", "-1M", "512 megs", "0x100"] {
            let e = parse_size(bad).unwrap_err();
            assert!(matches!(e, SizeError::Invalid(_)), "{bad}: {e:?}");
            assert!(e.to_string().contains(bad.trim()), "{e}");
        }
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("20000000T"),
            Err(SizeError::Overflow(_))
        ));
    }
}
