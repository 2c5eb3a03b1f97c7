//! Host files the machine is built from (firmware, kernel, initrd), read
//! whole after a size check, with errors that name the file.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// Why a host file could not be used.
#[derive(Debug)]
pub enum HostFileError {
    /// The file could not be read.
    Read {
        /// What it is (BIOS, kernel, initrd).
        what: &'static str,
        /// The path.
        path: String,
        /// Why.
        detail: String,
    },
    /// The file is larger than what it is for can take; nothing of it was
    /// read.
    TooLarge {
        /// What it is (BIOS, kernel, initrd).
        what: &'static str,
        /// The path.
        path: String,
        /// Its size in bytes.
        len: u64,
        /// The most it may hold, in bytes.
        limit: u64,
    },
}

impl std::error::Error for HostFileError {}

impl fmt::Display for HostFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostFileError::Read { what, path, detail } => write!(f, "{what} {path}: {detail}"),
            HostFileError::TooLarge {
                what,
                path,
                len,
                limit,
            } => write!(
                f,
                "{what} {path}: {len} bytes is more than the {limit} bytes a {what} may have"
            ),
        }
    }
}

/// Read a whole host file of at most `limit` bytes, checking its size
/// before reading anything: a huge (or sparse) file named by mistake is
/// refused at once instead of filling the host's memory.
pub fn read_limited(what: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>, HostFileError> {
    let name = || path.display().to_string();
    let read_err = |e: std::io::Error| HostFileError::Read {
        what,
        path: name(),
        detail: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(HostFileError::Read {
            what,
            path: name(),
            detail: "not a regular file".into(),
        });
    }
    let too_large = |len: u64| HostFileError::TooLarge {
        what,
        path: name(),
        len,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    // The file may grow between the check and the read: read no more than
    // one byte past the limit.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_bios::bios_image::MAX_IMAGE;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vmm-host-file-{}-{name}", std::process::id()))
    }

    /// A 64 GiB sparse file is refused from its size alone: the test would
    /// run out of memory (or take minutes) if it were read.
    #[test]
    fn host_files_are_refused_by_size_before_they_are_read() {
        let p = temp("huge-bios.bin");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 30).unwrap();
        let e = read_limited("BIOS", &p, MAX_IMAGE as u64).unwrap_err();
        assert!(
            matches!(e, HostFileError::TooLarge { len, limit, .. } if len == 64 << 30 && limit == MAX_IMAGE as u64),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("huge-bios.bin") && msg.contains("16777216"),
            "{msg}"
        );
        // At the limit it is read.
        f.set_len(4096).unwrap();
        assert_eq!(read_limited("initrd", &p, 4096).unwrap().len(), 4096);
        let e = read_limited("initrd", &p, 4095).unwrap_err();
        assert!(e.to_string().starts_with("initrd "), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = read_limited("kernel", &p, 1 << 20).unwrap_err();
        assert!(matches!(e, HostFileError::Read { .. }), "{e:?}");
    }
}
