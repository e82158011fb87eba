//! FP32 peaks of known GPUs, to put `gradscope bench`'s matmul figures in proportion.
//!
//! The figure is the datasheet's FP32 rate without tensor cores (what a WGSL shader's `f32`
//! multiply-adds get) at the boost clock, in TFLOP/s. The adapter name is matched as a
//! lowercase substring, the more specific names first; `--peak-tflops` overrides it, and an
//! unknown adapter has no peak (the table then prints GFLOP/s only).

/// (lowercase substring of the adapter name, FP32 TFLOP/s), most specific first.
pub const KNOWN_FP32_PEAKS: &[(&str, f64)] = &[
    // NVIDIA datacenter (SXM unless named): H200 and H100 SXM 67, H100 PCIe 51, H100 NVL 60
    ("h200", 67.0),
    ("h100 pcie", 51.0),
    ("h100 nvl", 60.0),
    ("h100", 67.0),
    ("gh200", 67.0),
    ("a100", 19.5),
    ("l40s", 91.6),
    ("l40", 90.5),
    ("l4", 30.3),
    ("a10g", 31.2),
    ("a10", 31.2),
    ("t4", 8.1),
    ("v100", 15.7),
    // NVIDIA workstation and GeForce
    ("rtx 6000 ada", 91.1),
    ("rtx a6000", 38.7),
    ("rtx 5090", 104.8),
    ("rtx 4090", 82.6),
    ("rtx 4080", 48.7),
    ("rtx 4070", 29.1),
    ("rtx 3090", 35.6),
    ("rtx 3080", 29.8),
    ("rtx 3070", 20.3),
    ("rtx 3060", 12.7),
    ("rtx 2080 ti", 13.4),
];

/// Where a peak figure came from.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Peak {
    pub tflops: f64,
    /// `--peak-tflops`, or the table's entry that matched the adapter name.
    pub source: String,
}

/// The FP32 peak of the adapter `name`: the override if given, else the table's first entry
/// whose key is a substring of the lowercase name (on a word boundary, so "l4" does not match
/// "l40s"), else None.
pub fn fp32_peak(name: &str, override_tflops: Option<f64>) -> Option<Peak> {
    if let Some(t) = override_tflops {
        return Some(Peak { tflops: t, source: "--peak-tflops".into() });
    }
    let lower = name.to_ascii_lowercase();
    KNOWN_FP32_PEAKS.iter().find(|(key, _)| contains_word(&lower, key)).map(|&(key, tflops)| Peak {
        tflops,
        source: format!("known GPUs: {key:?}"),
    })
}

/// `key` occurs in `s` with no letter or digit right before or after it.
fn contains_word(s: &str, key: &str) -> bool {
    s.match_indices(key).any(|(i, _)| {
        let before = s[..i].chars().next_back();
        let after = s[i + key.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric()) && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_names_find_their_peak() {
        let t = |name: &str| fp32_peak(name, None).map(|p| p.tflops);
        assert_eq!(t("NVIDIA H200"), Some(67.0));
        assert_eq!(t("NVIDIA H100 PCIe"), Some(51.0));
        assert_eq!(t("NVIDIA H100 80GB HBM3"), Some(67.0));
        assert_eq!(t("NVIDIA A100-SXM4-80GB"), Some(19.5));
        assert_eq!(t("NVIDIA GeForce RTX 4090"), Some(82.6));
        assert_eq!(t("NVIDIA L40S"), Some(91.6));
        assert_eq!(t("NVIDIA L4"), Some(30.3));
        assert_eq!(t("llvmpipe (LLVM 15.0.6, 256 bits)"), None);
        assert_eq!(t("AMD Radeon Graphics (RADV GFX1103_R1)"), None);
        let p = fp32_peak("llvmpipe", Some(0.2)).unwrap();
        assert_eq!((p.tflops, p.source.as_str()), (0.2, "--peak-tflops"));
    }
}
