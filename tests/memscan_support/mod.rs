//! Reading another process's memory for key material: every readable mapping through
//! /proc/PID/mem (with the mapping's MADV_DONTDUMP flag), and a core dump made with `gcore`,
//! searched for a set of needles (a key's raw pieces and its text encodings).
#![allow(dead_code)] // not every test binary uses every scanner

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use base64::Engine as _;

pub struct Region {
    pub start: usize,
    pub end: usize,
    pub name: String,
}

/// The readable mappings of `pid` (the kernel's vvar/vsyscall pages cannot be read).
pub fn readable_regions(pid: u32) -> Vec<Region> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next()?;
            let perms = it.next()?;
            let name = it.nth(3).unwrap_or("").to_string();
            if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" || name == "[vvar_vclock]" {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(Region { start: usize::from_str_radix(a, 16).ok()?, end: usize::from_str_radix(b, 16).ok()?, name })
        })
        .collect()
}

/// Every (address, needle index, mapping name) where a needle occurs in the readable memory
/// of `pid`, and the number of bytes scanned.
pub fn scan(pid: u32, needles: &[Vec<u8>]) -> (Vec<(usize, usize, String)>, u64) {
    let mut mem =
        std::fs::File::open(format!("/proc/{pid}/mem")).expect("cannot open /proc/PID/mem (ptrace restrictions?)");
    let mut hits = Vec::new();
    let mut scanned = 0u64;
    for r in readable_regions(pid) {
        let mut buf = vec![0u8; r.end - r.start];
        if mem.seek(SeekFrom::Start(r.start as u64)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue; // e.g. guard pages
        }
        scanned += buf.len() as u64;
        for (ni, n) in needles.iter().enumerate() {
            for at in find_all(&buf, n) {
                hits.push((r.start + at, ni, r.name.clone()));
            }
        }
    }
    (hits, scanned)
}

/// Offsets of every occurrence of `needle` in `hay`.
pub fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = memchr_find(&hay[from..], needle) {
        out.push(from + at);
        from += at + 1;
    }
    out
}

pub fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..hay.len() - needle.len() + 1].iter().position(|&b| b == first) {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// VmFlags of the mapping containing `addr`.
pub fn vm_flags(pid: u32, addr: usize) -> Option<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    inside = a <= addr && addr < b;
                    continue;
                }
            }
        }
        if inside {
            if let Some(f) = line.strip_prefix("VmFlags:") {
                return Some(f.trim().to_string());
            }
        }
    }
    None
}

/// Is the page at `addr` excluded from core dumps (MADV_DONTDUMP)?
pub fn dontdump(pid: u32, addr: usize) -> bool {
    vm_flags(pid, addr).is_some_and(|f| f.split_whitespace().any(|x| x == "dd"))
}

/// A key's raw pieces: both 32-byte XTS halves and the four 16-byte quarters (an AES round-key
/// schedule starts with the raw key).
pub fn raw_pieces(key: &[u8]) -> Vec<Vec<u8>> {
    vec![
        key[..32].to_vec(),
        key[32..].to_vec(),
        key[..16].to_vec(),
        key[16..32].to_vec(),
        key[32..48].to_vec(),
        key[48..].to_vec(),
    ]
}

/// Text encodings of a 64-byte key, each with a label: hex (lower, upper) of the key and of
/// each half, and base64 (standard and URL-safe alphabets, unpadded so a padded copy matches
/// too) of the key, of each half and of the 30-byte windows at offsets 0 and 33 (which are
/// substrings of the whole key's base64, so a truncated or split copy is found as well).
pub fn encodings(key: &[u8]) -> Vec<(String, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut parts: Vec<(&str, &[u8])> = vec![("key", key), ("half 1", &key[..32]), ("half 2", &key[32..])];
    parts.push(("bytes 0..30", &key[..30]));
    parts.push(("bytes 33..63", &key[33..63]));
    let mut out = Vec::new();
    for (name, p) in parts {
        if !name.starts_with("bytes") {
            out.push((format!("hex of {name}"), hex::encode(p).into_bytes()));
            out.push((format!("HEX of {name}"), hex::encode_upper(p).into_bytes()));
        }
        out.push((format!("base64 of {name}"), STANDARD_NO_PAD.encode(p).into_bytes()));
        let url = URL_SAFE_NO_PAD.encode(p).into_bytes();
        if url != STANDARD_NO_PAD.encode(p).into_bytes() {
            out.push((format!("base64url of {name}"), url));
        }
    }
    out
}

/// `gcore`'s path, or `None` after printing why the core-dump half of a test is skipped (a
/// failure under `SQLITE_TDE_CI=1`).
pub fn require_gcore(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("gcore")).find(|p| p.is_file()))
        .unwrap_or_default();
    if found.is_none() {
        let msg = "gcore (gdb) not found on PATH; install gdb";
        if std::env::var("SQLITE_TDE_CI").as_deref() == Ok("1") {
            panic!("{test}: {msg}");
        }
        eprintln!("SKIPPED (core dump part) {test}: {msg}");
    }
    found
}

/// Dump the core of the running process `pid` with `gcore` into `dir` (gdb honours
/// MADV_DONTDUMP and /proc/PID/coredump_filter like the kernel does) and return its bytes.
pub fn core_dump(gcore: &Path, pid: u32, dir: &Path) -> Vec<u8> {
    let prefix = dir.join("core");
    let out = std::process::Command::new(gcore)
        .arg("-o")
        .arg(&prefix)
        .arg(pid.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run gcore");
    let file = PathBuf::from(format!("{}.{pid}", prefix.display()));
    assert!(
        out.status.success() && file.is_file(),
        "gcore failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    bytes
}
