//! Data sets and seeded samplers.

pub mod idx;
pub mod images;
pub mod prepare;
pub mod shards;
pub mod text;
pub mod tokenizer;

/// Read a whole input file the user named, refusing what would never end or not fit: anything
/// but a regular file (`/dev/zero`, a FIFO, a directory) and files larger than `max_bytes`. The
/// errors say which, for the caller to wrap with the file's name and role.
pub fn read_file(path: &std::path::Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    // metadata, not open: opening a FIFO blocks until a writer comes
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file (a device, FIFO or directory)"));
    }
    if meta.len() > max_bytes {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} bytes, more than the {max_bytes} bytes this input may have", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // the file may grow while it is read: read at most one byte past the limit to notice
    std::fs::File::open(path)?.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::new(ErrorKind::InvalidInput, format!("more than the {max_bytes} bytes this input may have")));
    }
    Ok(bytes)
}

/// The largest text corpus `data` may name (its tokens are held in memory as u32).
pub const MAX_TEXT_BYTES: u64 = 1 << 30;
/// The largest config file.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The largest checkpoint (`--resume`, `init_from`, `eval`, `sample`).
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 36;
/// The largest IDX image file (gzip-compressed or not).
pub const MAX_IDX_BYTES: u64 = 1 << 30;
