//! Every WGSL file parses and validates with naga and follows the binding convention (uniform at
//! binding 0, read_write storage, at most 8 storage bindings per entry point). No device needed.

use gradscope::gpu::{SHADERS, reflect};

#[test]
fn every_shader_parses_validates_and_follows_the_binding_convention() {
    let mut failures = Vec::new();
    for (name, source) in SHADERS {
        match reflect(name, source) {
            Ok(r) => {
                assert!(!r.entry_points.is_empty(), "{name}.wgsl has no entry point");
                for (entry, bindings) in &r.entry_points {
                    println!("{name}.wgsl {entry}: uniform {} bytes, storage bindings {bindings:?}", r.uniform_size);
                    assert!(!bindings.is_empty(), "{name}.wgsl {entry} binds no tensor");
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn shader_files_on_disk_are_the_embedded_ones() {
    // The registry embeds shaders/ with include_str!; make sure none was forgotten.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "wgsl").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = SHADERS.iter().map(|(n, _)| n.to_string()).collect();
    embedded.sort();
    assert_eq!(on_disk, embedded);
}

#[test]
fn a_broken_shader_is_reported_with_its_name() {
    let bad = "@group(0) @binding(0) var<uniform> p: u32;\n@compute @workgroup_size(1) fn f() { let x: f32 = p; }";
    let err = reflect("broken", bad).unwrap_err().to_string();
    assert!(err.contains("broken.wgsl"), "{err}");
    let read_only = "struct P { n: u32 }\n@group(0) @binding(0) var<uniform> p: P;\n@group(0) @binding(1) var<storage, read> x: array<f32>;\n@compute @workgroup_size(1) fn f() { let y = x[p.n]; }";
    let err = reflect("ro", read_only).unwrap_err().to_string();
    assert!(err.contains("read_write"), "{err}");
}
