//! IDX files (the MNIST format), optionally gzip-compressed: a big-endian header (two zero bytes,
//! a type byte, 0x08 for u8, the number of dimensions, then each dimension as u32) and the raw
//! data. Every size is checked, so a corrupt or truncated file is a clear error, not a panic or
//! a huge allocation.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Decompressed IDX files larger than this are refused (MNIST's 60k training set is 47 MiB).
const MAX_BYTES: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid gzip stream")]
    Gzip { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// An IDX array of u8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parse IDX bytes (already decompressed). `what` names the file in errors.
pub fn parse(bytes: &[u8], what: &Path) -> Result<Idx, IdxError> {
    let bad = |m: String| IdxError::Format { path: what.into(), message: m };
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes: too short for an IDX header", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!("bad magic number {:02x}{:02x}{:02x}{:02x}: not an IDX file", bytes[0], bytes[1], bytes[2], bytes[3])));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x}; only unsigned bytes (0x08) are supported", bytes[2])));
    }
    let nd = bytes[3] as usize;
    if nd == 0 || nd > 4 {
        return Err(bad(format!("{nd} dimensions; expected 1 to 4")));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(bad(format!("truncated header: {} bytes for {nd} dimensions", bytes.len())));
    }
    let mut dims = Vec::with_capacity(nd);
    let mut total: u64 = 1;
    for i in 0..nd {
        let o = 4 + 4 * i;
        let d = u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as u64;
        total = total.saturating_mul(d);
        dims.push(d as usize);
    }
    if total > MAX_BYTES {
        return Err(bad(format!("dimensions {dims:?} describe {total} bytes, more than the {MAX_BYTES} allowed")));
    }
    let have = (bytes.len() - header) as u64;
    if have != total {
        return Err(bad(format!(
            "dimensions {dims:?} need {total} data bytes but the file has {have} ({})",
            if have < total { "truncated" } else { "trailing bytes" }
        )));
    }
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

/// Read an IDX file, gunzipping it when it starts with the gzip magic.
pub fn load(path: &Path) -> Result<Idx, IdxError> {
    let raw = super::read_file(path, super::MAX_IDX_BYTES).map_err(|source| IdxError::Read { path: path.into(), source })?;
    decode(&raw, path)
}

/// IDX bytes as read from a file (gzip-compressed or not); `path` names them in errors.
pub fn decode(raw: &[u8], path: &Path) -> Result<Idx, IdxError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw)
            .take(MAX_BYTES + 4096)
            .read_to_end(&mut out)
            .map_err(|source| IdxError::Gzip { path: path.into(), source })?;
        parse(&out, path)
    } else {
        parse(raw, path)
    }
}

/// Labelled images: `n` images of `rows x cols` u8 pixels and their labels.
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    /// Number of classes (max label + 1).
    pub classes: usize,
}

/// Load an images file (3 dimensions) and its labels file (1 dimension) and check they agree.
pub fn load_set(images: &Path, labels: &Path) -> Result<ImageSet, IdxError> {
    to_set(load(images)?, images, load(labels)?, labels)
}

/// An images array (3 dimensions) and its labels (1 dimension), checked to agree; the paths name
/// them in errors.
pub fn to_set(im: Idx, images: &Path, lb: Idx, labels: &Path) -> Result<ImageSet, IdxError> {
    let bad = |p: &Path, m: String| IdxError::Format { path: p.into(), message: m };
    if im.dims.len() != 3 {
        return Err(bad(images, format!("an images file has 3 dimensions, this one {:?}", im.dims)));
    }
    if lb.dims.len() != 1 {
        return Err(bad(labels, format!("a labels file has 1 dimension, this one {:?}", lb.dims)));
    }
    if im.dims[0] != lb.dims[0] {
        return Err(bad(labels, format!("{} labels for {} images in {}", lb.dims[0], im.dims[0], images.display())));
    }
    let classes = lb.data.iter().copied().max().map_or(0, |m| m as usize + 1);
    Ok(ImageSet { n: im.dims[0], rows: im.dims[1], cols: im.dims[2], pixels: im.data, labels: lb.data, classes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(dims: &[u32]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn parses_and_checks_sizes() {
        let p = Path::new("x.idx");
        let mut b = header(&[2, 2, 3]);
        b.extend(0..12u8);
        let idx = parse(&b, p).unwrap();
        assert_eq!(idx.dims, vec![2, 2, 3]);
        assert_eq!(idx.data.len(), 12);
        let e = parse(&b[..b.len() - 1], p).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("x.idx"), "{e}");
        let mut t = b.clone();
        t.push(0);
        assert!(parse(&t, p).unwrap_err().to_string().contains("trailing"));
        let mut m = b.clone();
        m[0] = 0x50;
        assert!(parse(&m, p).unwrap_err().to_string().contains("magic"));
        let huge = header(&[60000, 60000, 60000]);
        assert!(parse(&huge, p).unwrap_err().to_string().contains("more than"));
        assert!(parse(&[0, 0], p).is_err());
    }
}
