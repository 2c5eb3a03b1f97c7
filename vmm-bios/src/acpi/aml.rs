//! A small encoder for the ACPI Machine Language (ACPI 6.5, chapter 20):
//! just the terms a static DSDT needs (names, scopes, devices, packages,
//! integers, strings, buffers and resource templates). Each function
//! returns the encoded bytes of one term; terms nest by concatenation.

use alloc::vec::Vec;

const NAME_OP: u8 = 0x08;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const STRING_PREFIX: u8 = 0x0D;
const BYTE_PREFIX: u8 = 0x0A;
const WORD_PREFIX: u8 = 0x0B;
const DWORD_PREFIX: u8 = 0x0C;
const QWORD_PREFIX: u8 = 0x0E;
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const EXT_OP_PREFIX: u8 = 0x5B;
const DEVICE_OP: u8 = 0x82;
const ROOT_CHAR: u8 = b'\\';
const DUAL_NAME_PREFIX: u8 = 0x2E;
const MULTI_NAME_PREFIX: u8 = 0x2F;

/// A PkgLength (20.2.4) for `content` bytes that follow it; the encoded
/// length counts itself.
pub fn pkg_length(content: usize) -> Vec<u8> {
    for n in 1..=4usize {
        let total = content + n;
        let fits = match n {
            1 => total <= 0x3F,
            2 => total <= 0xFFF,
            3 => total <= 0xF_FFFF,
            _ => total <= 0xFFF_FFFF,
        };
        if !fits {
            continue;
        }
        if n == 1 {
            return alloc::vec![total as u8];
        }
        let mut v = Vec::with_capacity(n);
        v.push((((n - 1) as u8) << 6) | (total & 0xF) as u8);
        for i in 0..n - 1 {
            v.push((total >> (4 + 8 * i)) as u8);
        }
        return v;
    }
    // A DSDT never comes close to 256 MiB; encode the maximum.
    alloc::vec![0xCF, 0xFF, 0xFF, 0xFF]
}

/// A NameString (20.2.2) for a dotted path such as `\_SB.PCI0` or `_HID`;
/// segments shorter than four characters are padded with `_`.
pub fn name_string(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = path;
    if let Some(r) = rest.strip_prefix('\\') {
        out.push(ROOT_CHAR);
        rest = r;
    }
    while let Some(r) = rest.strip_prefix('^') {
        out.push(b'^');
        rest = r;
    }
    let segs: Vec<[u8; 4]> = rest
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut seg = [b'_'; 4];
            for (d, c) in seg.iter_mut().zip(s.bytes()) {
                *d = c;
            }
            seg
        })
        .collect();
    match segs.len() {
        0 => out.push(0),
        1 => {}
        2 => out.push(DUAL_NAME_PREFIX),
        n => {
            out.push(MULTI_NAME_PREFIX);
            out.push(n as u8);
        }
    }
    for s in segs {
        out.extend_from_slice(&s);
    }
    out
}

/// An integer constant in its shortest encoding.
pub fn integer(v: u64) -> Vec<u8> {
    match v {
        0 => alloc::vec![ZERO_OP],
        1 => alloc::vec![ONE_OP],
        v if v <= 0xFF => alloc::vec![BYTE_PREFIX, v as u8],
        v if v <= 0xFFFF => {
            let mut o = alloc::vec![WORD_PREFIX];
            o.extend_from_slice(&(v as u16).to_le_bytes());
            o
        }
        v if v <= 0xFFFF_FFFF => {
            let mut o = alloc::vec![DWORD_PREFIX];
            o.extend_from_slice(&(v as u32).to_le_bytes());
            o
        }
        v => {
            let mut o = alloc::vec![QWORD_PREFIX];
            o.extend_from_slice(&v.to_le_bytes());
            o
        }
    }
}

/// A string constant.
pub fn string(s: &str) -> Vec<u8> {
    let mut o = alloc::vec![STRING_PREFIX];
    o.extend(s.bytes().filter(|b| *b != 0));
    o.push(0);
    o
}

/// A compressed EISA id such as `PNP0A03`, as the integer `EISAID()` makes.
pub fn eisa_id(id: &str) -> Vec<u8> {
    let b = id.as_bytes();
    let ch = |i: usize| u32::from(b.get(i).copied().unwrap_or(b'@').wrapping_sub(0x40) & 0x1F);
    let hex = |i: usize| {
        let c = b.get(i).copied().unwrap_or(b'0');
        u32::from(match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'F' => c - b'A' + 10,
            b'a'..=b'f' => c - b'a' + 10,
            _ => 0,
        })
    };
    let b0 = (ch(0) << 2) | (ch(1) >> 3);
    let b1 = ((ch(1) & 7) << 5) | ch(2);
    let b2 = (hex(3) << 4) | hex(4);
    let b3 = (hex(5) << 4) | hex(6);
    integer(u64::from(b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)))
}

/// `Name(path, value)`.
pub fn name(path: &str, value: &[u8]) -> Vec<u8> {
    let mut o = alloc::vec![NAME_OP];
    o.extend(name_string(path));
    o.extend_from_slice(value);
    o
}

fn with_pkg(prefix: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut o = prefix.to_vec();
    o.extend(pkg_length(inner.len()));
    o.extend_from_slice(inner);
    o
}

/// `Scope(path) { body }`.
pub fn scope(path: &str, body: &[u8]) -> Vec<u8> {
    let mut inner = name_string(path);
    inner.extend_from_slice(body);
    with_pkg(&[SCOPE_OP], &inner)
}

/// `Device(path) { body }`.
pub fn device(path: &str, body: &[u8]) -> Vec<u8> {
    let mut inner = name_string(path);
    inner.extend_from_slice(body);
    with_pkg(&[EXT_OP_PREFIX, DEVICE_OP], &inner)
}

/// `Package() { elements }` (at most 255 elements).
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut inner = alloc::vec![elements.len().min(255) as u8];
    for e in elements.iter().take(255) {
        inner.extend_from_slice(e);
    }
    with_pkg(&[PACKAGE_OP], &inner)
}

/// `Buffer() { bytes }`.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut inner = integer(bytes.len() as u64);
    inner.extend_from_slice(bytes);
    with_pkg(&[BUFFER_OP], &inner)
}

/// A resource template (ACPI 6.5, 6.4): descriptors appended in order,
/// finished with an end tag by [`ResourceTemplate::to_buffer`].
#[derive(Clone, Debug, Default)]
pub struct ResourceTemplate {
    bytes: Vec<u8>,
}

impl ResourceTemplate {
    /// An empty template.
    pub fn new() -> Self {
        Self::default()
    }

    /// `IO(Decode16, base, base, 1, len)`: a fixed I/O range.
    pub fn io(mut self, base: u16, len: u8) -> Self {
        self.bytes.extend_from_slice(&[0x47, 0x01]);
        self.bytes.extend_from_slice(&base.to_le_bytes());
        self.bytes.extend_from_slice(&base.to_le_bytes());
        self.bytes.extend_from_slice(&[0x01, len]);
        self
    }

    /// `IRQNoFlags() { irq }`: an edge-triggered, active-high ISA IRQ.
    pub fn irq(mut self, irq: u8) -> Self {
        let mask = 1u16 << (irq & 15);
        self.bytes.push(0x22);
        self.bytes.extend_from_slice(&mask.to_le_bytes());
        self
    }

    /// A Word Address Space descriptor of `kind` (1 = I/O, 2 = bus number)
    /// covering `[min, max]`, produced and consumed by the root bridge.
    fn word_space(
        mut self,
        kind: u8,
        general_flags: u8,
        type_flags: u8,
        min: u16,
        max: u16,
    ) -> Self {
        self.bytes.push(0x88);
        self.bytes.extend_from_slice(&13u16.to_le_bytes());
        self.bytes
            .extend_from_slice(&[kind, general_flags, type_flags]);
        for v in [0u16, min, max, 0, max.wrapping_sub(min).wrapping_add(1)] {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    /// `WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, ...)`.
    pub fn word_bus(self, min: u16, max: u16) -> Self {
        self.word_space(2, 0x0C, 0, min, max)
    }

    /// `WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,
    /// ...)`: an I/O window of a root bridge.
    pub fn word_io(self, min: u16, max: u16) -> Self {
        self.word_space(1, 0x0C, 0x03, min, max)
    }

    /// `DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed,
    /// Cacheable, ReadWrite, ...)`: a memory window of a root bridge.
    pub fn dword_memory(mut self, min: u32, max: u32) -> Self {
        self.bytes.push(0x87);
        self.bytes.extend_from_slice(&23u16.to_le_bytes());
        // Memory space; producer, min/max fixed; cacheable, read-write.
        self.bytes.extend_from_slice(&[0, 0x0C, 0x03]);
        for v in [0u32, min, max, 0, max.wrapping_sub(min).wrapping_add(1)] {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    /// The template as a `Buffer` term, with its end tag.
    pub fn to_buffer(&self) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b.extend_from_slice(&[0x79, 0x00]);
        buffer(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_switches_encodings_at_the_spec_limits() {
        // One byte holds totals up to 63 (content 62).
        assert_eq!(pkg_length(62), [63]);
        // Content 63 needs two bytes: total 65 = 0x41.
        assert_eq!(pkg_length(63), [0x41, 0x04]);
        // Two bytes hold totals up to 0xFFF.
        assert_eq!(pkg_length(0xFFD), [0x4F, 0xFF]);
        assert_eq!(pkg_length(0xFFE), [0x81, 0x00, 0x01]);
    }

    #[test]
    fn name_strings_pad_and_prefix() {
        assert_eq!(name_string("_S5"), b"_S5_");
        assert_eq!(name_string("\\_SB.PCI0"), b"\\\x2E_SB_PCI0");
        assert_eq!(name_string("\\A.B.C"), b"\\\x2F\x03A___B___C___");
        assert_eq!(name_string("^^FOO"), b"^^FOO_");
        assert_eq!(name_string("\\"), b"\\\0");
    }

    #[test]
    fn integers_use_the_shortest_form() {
        assert_eq!(integer(0), [0x00]);
        assert_eq!(integer(1), [0x01]);
        assert_eq!(integer(0x12), [0x0A, 0x12]);
        assert_eq!(integer(0x1234), [0x0B, 0x34, 0x12]);
        assert_eq!(integer(0x12_3456), [0x0C, 0x56, 0x34, 0x12, 0x00]);
        assert_eq!(integer(1 << 32)[0], 0x0E);
        // EISAID("PNP0A03") is 0x030AD041.
        assert_eq!(eisa_id("PNP0A03"), integer(0x030A_D041));
    }
}
