//! Snapshot files on the Linux host: writing a paused PC's snapshot
//! (`PUT /api/v1/vm.snapshot`, `vmm snapshot`) and restoring one into a
//! freshly built PC (`vmm run --restore FILE`).
//!
//! A PC with several vCPUs is written and restored whole, every vCPU
//! with it ([`write_vcpus`], [`restore_vcpus`]); the vCPU threads hand
//! theirs over for it (`crate::vcpu_threads`). A snapshot restores only
//! into a machine with as many vCPUs (`--cpus`) as the saved one.
//!
//! Restore maps the file read-only and private, parses and checks every
//! section (`vmm_core::snapshot`), restores devices and the vCPUs, and then
//! maps each run of saved pages of the file over the guest's RAM blocks
//! with `MAP_PRIVATE | MAP_FIXED`: nothing is copied, a page is read from
//! the file (or the page cache) when the guest first touches it, and
//! copied only when it writes it. The rest of RAM is fresh zero pages.
//!
//! The file must stay as it is while the restored VM runs (as a disk
//! image must): `vmm` holds a shared `flock` on it, so another `vmm`
//! that wants to write it (a snapshot to the same path) sees it is in
//! use.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm_core::memory::BlockId;
use vmm_core::snapshot::{RamFill, Snapshot, SnapshotError, SnapshotSink, PAGE_SIZE};
use vmm_core::vcpu::ArchState;
use vmm_devices::pc::Pc;

/// Why a snapshot file could not be written or restored: the file and
/// the reason.
#[derive(Debug)]
pub struct SnapshotFileError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

impl std::error::Error for SnapshotFileError {}

impl fmt::Display for SnapshotFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snapshot {}: {}", self.path.display(), self.reason)
    }
}

fn error(path: &Path, reason: impl fmt::Display) -> SnapshotFileError {
    SnapshotFileError {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A buffered file a snapshot is written to; the first I/O error is kept.
struct FileSink {
    out: BufWriter<File>,
    error: Option<std::io::Error>,
}

impl SnapshotSink for FileSink {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.out.write_all(bytes).map_err(|e| {
            self.error = Some(e);
            SnapshotError::Sink
        })
    }
}

/// What a written snapshot measured.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    /// Bytes in the file.
    pub bytes: u64,
    /// Time to write and sync it.
    pub elapsed: Duration,
}

/// Write a snapshot of the paused `pc` (whose vCPU is `vcpu`) to `path`:
/// first to `PATH.partial`, synced, then renamed over `path`, so a
/// failed snapshot never leaves a half file at `path`.
pub fn write<B: ArchState>(
    pc: &mut Pc,
    vcpu: &mut B,
    path: &Path,
) -> Result<Written, SnapshotFileError> {
    write_vcpus(pc, &mut [vcpu as &mut dyn ArchState], path)
}

/// [`write()`] for a PC with several vCPUs: `vcpus[i]` is vCPU `i`, one for
/// each vCPU of the PC.
pub fn write_vcpus(
    pc: &mut Pc,
    vcpus: &mut [&mut dyn ArchState],
    path: &Path,
) -> Result<Written, SnapshotFileError> {
    let started = Instant::now();
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = File::create(&partial).map_err(|e| error(path, format!("cannot create: {e}")))?;
    let mut sink = FileSink {
        out: BufWriter::with_capacity(1 << 20, file),
        error: None,
    };
    let result = pc
        .snapshot_vcpus(vcpus, &mut sink)
        .map_err(|e| match sink.error.take() {
            Some(io) => error(path, format!("cannot write: {io}")),
            None => error(path, e),
        });
    let result = result.and_then(|()| {
        let file = sink
            .out
            .into_inner()
            .map_err(|e| error(path, format!("cannot write: {}", e.error())))?;
        file.sync_all()
            .map_err(|e| error(path, format!("cannot sync: {e}")))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        std::fs::rename(&partial, path)
            .map_err(|e| error(path, format!("cannot rename into place: {e}")))?;
        Ok(bytes)
    });
    match result {
        Ok(bytes) => Ok(Written {
            bytes,
            elapsed: started.elapsed(),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// A snapshot file mapped read-only.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes owned
        // by `self` (see `restore`: the file is flock'ed so no cooperating
        // writer changes it while mapped).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping this value owns; the slices it lent
        // do not outlive it.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// What a restore measured.
#[derive(Clone, Copy, Debug)]
pub struct Restored {
    /// Pages mapped from the file.
    pub pages: u64,
    /// Runs of pages mapped with one `mmap` each.
    pub mappings: u64,
    /// From opening the file to the VM ready to run.
    pub elapsed: Duration,
}

/// Restore the snapshot at `path` into `pc`, freshly built from the same
/// machine description as the saved one, and its `vcpu`. Everything is
/// validated before anything changes; a refusal names the file and the
/// reason. Returns the open file, which must stay open (and locked) while
/// the VM runs.
pub fn restore<B: ArchState>(
    pc: &mut Pc,
    vcpu: &mut B,
    path: &Path,
) -> Result<(File, Restored), SnapshotFileError> {
    restore_vcpus(pc, &mut [vcpu as &mut dyn ArchState], path)
}

/// [`restore`] into a PC with several vCPUs: `vcpus[i]` is vCPU `i`, one
/// for each vCPU of the PC. A snapshot of another number of vCPUs is
/// refused, saying how many it holds.
pub fn restore_vcpus(
    pc: &mut Pc,
    vcpus: &mut [&mut dyn ArchState],
    path: &Path,
) -> Result<(File, Restored), SnapshotFileError> {
    let started = Instant::now();
    let file = File::open(path).map_err(|e| error(path, format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| error(path, format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(error(path, "not a regular file"));
    }
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
        return Err(error(
            path,
            format!("locked: {}", std::io::Error::last_os_error()),
        ));
    }
    let len = usize::try_from(meta.len()).map_err(|_| error(path, "too large"))?;
    if len == 0 {
        return Err(error(path, SnapshotError::BadMagic));
    }
    // SAFETY: a new read-only private mapping of the file at an address the
    // kernel picks overlaps no Rust object; checked below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(error(
            path,
            format!("cannot map: {}", std::io::Error::last_os_error()),
        ));
    }
    let mapped = Mapped { ptr, len };
    let snapshot = Snapshot::parse(mapped.bytes()).map_err(|e| error(path, e))?;
    let saved = snapshot.header.vcpu_count as usize;
    if saved != pc.cpus() {
        return Err(error(
            path,
            format!(
                "it holds {saved} vCPU{}, this machine has {} (--cpus): restore it with --cpus {saved}",
                if saved == 1 { "" } else { "s" },
                pc.cpus()
            ),
        ));
    }
    pc.restore_parsed_vcpus(&snapshot, vcpus, RamFill::Host)
        .map_err(|e| error(path, e))?;
    let (pages, mappings) = map_pages(pc, &snapshot, &file).map_err(|e| error(path, e))?;
    Ok((
        file,
        Restored {
            pages,
            mappings,
            elapsed: started.elapsed(),
        },
    ))
}

/// Put fresh zero pages over every RAM block of `pc` and map the saved
/// pages of `file` over them, one `mmap` per run of pages that follow
/// each other both in the block and in the file. Returns (pages, runs).
fn map_pages(pc: &mut Pc, snapshot: &Snapshot<'_>, file: &File) -> Result<(u64, u64), String> {
    let page = PAGE_SIZE as usize;
    let memory = pc.vm_mut().memory_mut();
    // Each RAM block's host address and length, checked page-aligned.
    let mut blocks = Vec::new();
    for record in &snapshot.blocks {
        if record.role == vmm_core::snapshot::blocks::BlockRole::Rom {
            blocks.push(None);
            continue;
        }
        let bytes = memory
            .block_bytes_all_mut(BlockId(record.id))
            .ok_or("a memory block is missing")?;
        let (addr, len) = (bytes.as_mut_ptr() as usize, bytes.len());
        if addr % page != 0 {
            return Err("a RAM block is not page-aligned".into());
        }
        let whole = len.next_multiple_of(page);
        // SAFETY: [addr, addr + whole) is the block's own anonymous mapping
        // (page-aligned, whole pages: `MmapMemory`); no reference into it
        // is live (the borrow above ended). Replacing it with fresh zero
        // pages is a write of zeros as far as Rust is concerned.
        let r = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                whole,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(format!(
                "cannot clear guest RAM: {}",
                std::io::Error::last_os_error()
            ));
        }
        blocks.push(Some((addr, whole)));
    }
    let mut runs = 0u64;
    let mut i = 0;
    while i < snapshot.pages.len() {
        let (block, offset) = snapshot.pages[i];
        let mut n = 1;
        while let Some(&(b, o)) = snapshot.pages.get(i + n) {
            if b != block || o != offset + n as u64 * PAGE_SIZE {
                break;
            }
            n += 1;
        }
        let (addr, whole) = blocks
            .get(block as usize)
            .copied()
            .flatten()
            .ok_or("a page of a ROM block")?;
        let start = usize::try_from(offset).map_err(|_| "page offset")?;
        let len = n * page;
        if start.checked_add(len).is_none_or(|end| end > whole) {
            return Err("pages past their block".into());
        }
        let file_offset = snapshot.page_file_offset(i);
        // SAFETY: [addr + start, addr + start + len) lies inside the RAM
        // block's mapping (checked just above) and no reference into it is
        // live; a private mapping of the file's page-aligned data there
        // replaces those pages' contents as a copy would.
        let r = unsafe {
            libc::mmap(
                (addr + start) as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                file_offset as libc::off_t,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(format!(
                "cannot map guest pages: {}",
                std::io::Error::last_os_error()
            ));
        }
        runs += 1;
        i += n;
    }
    Ok((snapshot.pages.len() as u64, runs))
}
