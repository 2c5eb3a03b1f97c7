//! A minimal, independent AML decoder for tests: walks the definition
//! blocks of a static DSDT (Name, Scope, Device, Package, integers,
//! strings, buffers) into a map from absolute path to value, following
//! ACPI 6.5 chapter 20. Anything else is an error, so an encoder bug that
//! produces unexpected bytes fails the test.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Integer(u64),
    String(String),
    Buffer(Vec<u8>),
    Package(Vec<Value>),
    Device,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let v = *self.b.get(self.at).ok_or("unexpected end of AML")?;
        self.at += 1;
        Ok(v)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or("unexpected end of AML")?;
        self.at += n;
        Ok(s)
    }

    /// Returns the end offset of the package that starts at the PkgLength.
    fn pkg_end(&mut self) -> Result<usize, String> {
        let start = self.at;
        let lead = self.byte()?;
        let follow = (lead >> 6) as usize;
        let mut len = if follow == 0 {
            (lead & 0x3F) as usize
        } else {
            if lead & 0x30 != 0 {
                return Err(format!("PkgLength lead {lead:#x} has reserved bits set"));
            }
            (lead & 0x0F) as usize
        };
        for i in 0..follow {
            len |= (self.byte()? as usize) << (4 + 8 * i);
        }
        Ok(start + len)
    }

    fn name_seg(&mut self) -> Result<String, String> {
        let s = self.take(4)?;
        if !s
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
        {
            return Err(format!("bad NameSeg {s:?}"));
        }
        Ok(String::from_utf8(s.to_vec()).unwrap())
    }

    /// Returns (absolute?, parent hops, segments).
    fn name_string(&mut self) -> Result<(bool, usize, Vec<String>), String> {
        let mut root = false;
        let mut up = 0;
        match self.b.get(self.at) {
            Some(b'\\') => {
                root = true;
                self.at += 1;
            }
            _ => {
                while self.b.get(self.at) == Some(&b'^') {
                    up += 1;
                    self.at += 1;
                }
            }
        }
        let segs = match self.byte()? {
            0 => vec![],
            0x2E => vec![self.name_seg()?, self.name_seg()?],
            0x2F => {
                let n = self.byte()?;
                (0..n).map(|_| self.name_seg()).collect::<Result<_, _>>()?
            }
            _ => {
                self.at -= 1;
                vec![self.name_seg()?]
            }
        };
        Ok((root, up, segs))
    }

    fn data(&mut self) -> Result<Value, String> {
        Ok(match self.byte()? {
            0x00 => Value::Integer(0),
            0x01 => Value::Integer(1),
            0xFF => Value::Integer(u64::MAX),
            0x0A => Value::Integer(self.byte()? as u64),
            0x0B => Value::Integer(u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as u64),
            0x0C => Value::Integer(u32::from_le_bytes(self.take(4)?.try_into().unwrap()) as u64),
            0x0E => Value::Integer(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            0x0D => {
                let end = self.b[self.at..]
                    .iter()
                    .position(|c| *c == 0)
                    .ok_or("unterminated string")?;
                let s = String::from_utf8(self.take(end)?.to_vec()).map_err(|e| e.to_string())?;
                self.at += 1;
                Value::String(s)
            }
            0x11 => {
                let end = self.pkg_end()?;
                let size = match self.data()? {
                    Value::Integer(n) => n as usize,
                    v => return Err(format!("buffer size {v:?}")),
                };
                let bytes = self.take(end - self.at)?.to_vec();
                if bytes.len() != size {
                    return Err(format!(
                        "buffer holds {} bytes, declares {size}",
                        bytes.len()
                    ));
                }
                Value::Buffer(bytes)
            }
            0x12 => {
                let end = self.pkg_end()?;
                let n = self.byte()? as usize;
                let mut elems = vec![];
                while self.at < end {
                    elems.push(self.data()?);
                }
                if elems.len() != n || self.at != end {
                    return Err(format!(
                        "package declares {n} elements, holds {}",
                        elems.len()
                    ));
                }
                Value::Package(elems)
            }
            op => {
                return Err(format!(
                    "unsupported data opcode {op:#x} at {}",
                    self.at - 1
                ))
            }
        })
    }
}

fn resolve(scope: &[String], (root, up, segs): (bool, usize, Vec<String>)) -> Vec<String> {
    let mut path: Vec<String> = if root {
        vec![]
    } else {
        scope[..scope.len() - up].to_vec()
    };
    path.extend(segs);
    path
}

fn terms(
    r: &mut Reader<'_>,
    end: usize,
    scope: &[String],
    out: &mut BTreeMap<String, Value>,
) -> Result<(), String> {
    while r.at < end {
        match r.byte()? {
            0x08 => {
                let path = resolve(scope, r.name_string()?);
                let v = r.data()?;
                out.insert(format!("\\{}", path.join(".")), v);
            }
            0x10 => {
                let pend = r.pkg_end()?;
                let path = resolve(scope, r.name_string()?);
                terms(r, pend, &path, out)?;
            }
            0x5B => match r.byte()? {
                0x82 => {
                    let pend = r.pkg_end()?;
                    let path = resolve(scope, r.name_string()?);
                    out.insert(format!("\\{}", path.join(".")), Value::Device);
                    terms(r, pend, &path, out)?;
                }
                op => return Err(format!("unsupported extended opcode {op:#x}")),
            },
            op => return Err(format!("unsupported opcode {op:#x} at {}", r.at - 1)),
        }
    }
    if r.at != end {
        return Err(format!("term list overruns its package: {} > {end}", r.at));
    }
    Ok(())
}

/// Decode an AML stream (the DSDT without its header).
pub fn decode(aml: &[u8]) -> Result<BTreeMap<String, Value>, String> {
    let mut out = BTreeMap::new();
    let mut r = Reader { b: aml, at: 0 };
    terms(&mut r, aml.len(), &[], &mut out)?;
    Ok(out)
}

/// Split a resource template into (tag, body) items, checking the end tag.
pub fn resources(buf: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut items = vec![];
    let mut at = 0;
    loop {
        let tag = *buf.get(at).ok_or("no end tag")?;
        if tag & 0x80 == 0 {
            let len = (tag & 7) as usize;
            let name = tag >> 3;
            let body = buf
                .get(at + 1..at + 1 + len)
                .ok_or("short small item")?
                .to_vec();
            at += 1 + len;
            if name == 0x0F {
                if at != buf.len() {
                    return Err("bytes after the end tag".into());
                }
                return Ok(items);
            }
            items.push((tag, body));
        } else {
            let len = u16::from_le_bytes(
                buf.get(at + 1..at + 3)
                    .ok_or("short large item")?
                    .try_into()
                    .unwrap(),
            ) as usize;
            let body = buf
                .get(at + 3..at + 3 + len)
                .ok_or("short large item")?
                .to_vec();
            at += 3 + len;
            items.push((tag, body));
        }
    }
}
