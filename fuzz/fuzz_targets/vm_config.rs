//! Fuzz `vm.toml` parsing and validation (host-glue-linux `config`) and
//! size parsing (`size`) with arbitrary text.
//!
//! Invariants: no panic; a syntax error names the file and is one line
//! when shown; every value error names a key the format has (`memory`,
//! `boot[i]` with i inside the boot list, `firmware.bios`, ...); a parsed
//! machine has a memory size the checks allow and only absolute paths
//! (relative ones resolved against the file's folder); a parsed size
//! round-trips through its shortest K/M/G/T spelling and through plain
//! bytes; a refused size names the text it refused.
#![no_main]

use host_glue_linux::config::{
    parse_config, parse_memory, BootDevice, ConfigError, KeyStyle, SerialTarget, MAX_MEMORY,
    MIN_MEMORY,
};
use host_glue_linux::size::{parse_size, parse_size_in, SizeError};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

/// Keys a `vm.toml` error may name (besides `boot[i]`).
const KEYS: [&str; 7] = [
    "memory",
    "firmware.bios",
    "images.cdrom",
    "images.disk",
    "kernel.image",
    "kernel.initrd",
    "devices.serial",
];

fn check_key(key: &str, boot_len: usize) {
    if let Some(i) = key.strip_prefix("boot[").and_then(|r| r.strip_suffix(']')) {
        let i: usize = i.parse().expect("boot index");
        assert!(i < boot_len, "{key} outside a boot list of {boot_len}");
    } else {
        assert!(KEYS.contains(&key), "error names unknown key {key:?}");
    }
}

fn check_size(text: &str) {
    match parse_size(text) {
        Ok(v) => {
            assert_eq!(parse_size(&v.to_string()), Ok(v));
            assert_eq!(parse_size(&format!("{v}B")), Ok(v));
            let (shift, unit) = [(40, "T"), (30, "G"), (20, "M"), (10, "K"), (0, "")]
                .into_iter()
                .find(|(s, _)| v % (1u64 << s) == 0)
                .unwrap();
            let short = format!("{}{unit}", v >> shift);
            assert_eq!(parse_size(&short), Ok(v), "{short}");
            assert_eq!(parse_size(&format!(" {}{unit}iB ", v >> shift)), Ok(v));
            // `memory` counts a bare number in MiB (as QEMU's -m); whole
            // MiB in range is exactly what it takes.
            let mem = parse_memory(text, "memory");
            let allowed = parse_size_in(text, 20)
                .is_ok_and(|m| (MIN_MEMORY..=MAX_MEMORY).contains(&m) && m % (1 << 20) == 0);
            assert_eq!(mem.is_ok(), allowed, "{text:?} = {v}");
        }
        Err(SizeError::Empty) => assert!(text.trim().is_empty()),
        Err(e @ (SizeError::Invalid(_) | SizeError::Overflow(_))) => {
            assert!(e.to_string().contains(text.trim()), "{e} for {text:?}");
            match parse_memory(text, "memory") {
                Err(ConfigError::Value { key, .. }) => assert_eq!(key, "memory"),
                other => panic!("{other:?}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_size(&text);
    // The first line alone, as a size would be written on a command line.
    if let Some(first) = text.lines().next() {
        check_size(first);
    }
    let file = Path::new("/nonexistent/vm.toml");
    let base = Path::new("/nonexistent");
    match parse_config(&text, file, base) {
        Err(e @ ConfigError::Syntax { .. }) => {
            let shown = e.to_string();
            assert!(shown.starts_with("/nonexistent/vm.toml: "), "{shown}");
            assert!(!shown.contains('\n'), "{shown}");
            assert!(shown.len() > "/nonexistent/vm.toml: ".len(), "{shown}");
        }
        Err(ConfigError::Value { key, problem }) => {
            // A refused value names the key the file set (`devices.serial`,
            // `boot[1]`, `images.disk_lock`): its last part is in the text
            // (unless the file spelled the key with escapes).
            let last = key.rsplit('.').next().unwrap_or(&key);
            let last = last.split('[').next().unwrap_or(last);
            assert!(!last.is_empty(), "{key}: {problem}");
            assert!(
                text.contains(last) || text.contains('\\'),
                "{key}: {problem}"
            );
            assert!(
                !problem.is_empty() && !problem.contains('\n'),
                "{key}: {problem}"
            );
        }
        Err(other) => panic!("parse gave {other:?}"),
        Ok(m) => {
            assert!((MIN_MEMORY..=MAX_MEMORY).contains(&m.memory));
            assert_eq!(m.memory % (1 << 20), 0);
            assert_eq!(
                parse_memory(&format!("{}M", m.memory >> 20), "memory"),
                Ok(m.memory)
            );
            let mut paths = vec![m.bios.clone()];
            paths.extend(m.cdrom.clone());
            paths.extend(m.disk.clone());
            if let Some(k) = &m.kernel {
                paths.push(k.image.clone());
                paths.extend(k.initrd.clone());
            }
            if let SerialTarget::File(p) = &m.serial {
                paths.push(p.clone());
            }
            for p in &paths {
                assert!(p.is_absolute(), "{} not resolved", p.display());
            }
            if !text.contains("boot") {
                let mut want = Vec::new();
                if m.cdrom.is_some() {
                    want.push(BootDevice::Cdrom);
                }
                if m.disk.is_some() {
                    want.push(BootDevice::Disk);
                }
                assert_eq!(m.boot, want);
            }
            for style in [KeyStyle::File, KeyStyle::Flags] {
                match m.validate(style) {
                    Ok(()) => {}
                    Err(ConfigError::Value { key, .. })
                    | Err(ConfigError::MissingFile { key, .. }) => match style {
                        KeyStyle::File => check_key(&key, m.boot.len()),
                        KeyStyle::Flags => assert!(key.starts_with("--"), "{key}"),
                    },
                    Err(other) => panic!("validate gave {other:?}"),
                }
            }
        }
    }
});
