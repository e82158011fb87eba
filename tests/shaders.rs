//! Every WGSL file parses and validates with naga and follows the binding convention (uniform at
//! binding 0, storage tensors at 1.., at most 8 storage bindings per entry point), and every entry
//! point fits WebGPU's guaranteed limits. No device needed.

use gradscope::gpu::{ACT_ALIAS_F32, F16_SUFFIX, SHADERS, act_f16_source, all_sources, check_limits, reflect, with_prelude};

#[test]
fn every_shader_parses_validates_and_follows_the_binding_convention() {
    let mut failures = Vec::new();
    // as compiled: with the prelude, f16 instantiations included
    for (name, source) in all_sources() {
        match reflect(name, source) {
            Ok(r) => {
                assert!(!r.entry_points.is_empty(), "{name}.wgsl has no entry point");
                for ep in &r.entry_points {
                    let bindings: Vec<String> =
                        ep.bindings.iter().map(|b| format!("{}{}", b.binding, if b.read_only { "r" } else { "rw" })).collect();
                    println!(
                        "{name}.wgsl {}: uniform {} bytes, storage bindings {bindings:?}, {} invocations, {} bytes of workgroup memory",
                        ep.name, r.uniform_size, ep.invocations, ep.workgroup_bytes
                    );
                    assert!(!ep.bindings.is_empty(), "{name}.wgsl {} binds no tensor", ep.name);
                    // WebGPU's guaranteed limits (what a browser gives without asking)
                    if let Err(e) = check_limits(name, ep, &wgpu::Limits::default()) {
                        failures.push(e.to_string());
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The files whose activation bindings are `act` (f16 under mixed precision). Listed here so that a
/// file cannot drop out of the f16 instantiation (lose its alias line) without a test failing.
const ACT_TYPED: &[&str] = &[
    "encoder",
    "embedding_gpu",
    "layernorm",
    "flash_attention",
    "rows",
    "rows_subgroup",
    "matmul",
    "matmul_cpu",
    "matmul_gpu",
    "matmul_gpu_128x64",
    "attention",
    "attention_cpu",
    "gelu",
    "residual",
    "crossentropy",
];

#[test]
fn act_typed_shaders_validate_as_f16_with_the_same_entry_points_and_bindings() {
    let mut act_typed = Vec::new();
    let mut failures = Vec::new();
    for (name, source) in SHADERS {
        let Some(f16_source) = act_f16_source(source) else { continue };
        act_typed.push(*name);
        let alias_lines = source.lines().filter(|l| *l == ACT_ALIAS_F32).count();
        assert_eq!(alias_lines, 1, "{name}.wgsl must declare `{ACT_ALIAS_F32}` once, on a line of its own");
        assert!(f16_source.starts_with("enable f16;\n") && f16_source.contains("\nalias act = f16;\n"), "{name}.wgsl");
        let f32_reflection = reflect(name, &with_prelude(source)).unwrap_or_else(|e| panic!("{e}"));
        match reflect(&format!("{name}{F16_SUFFIX}"), &with_prelude(&f16_source)) {
            Ok(r) => {
                println!("{name}{F16_SUFFIX}.wgsl: {:?}", r.entry_points);
                let what = format!("{name}.wgsl: the f16 instantiation's entry points and bindings");
                type Shape = Vec<(String, Vec<(u32, String, bool)>, u32)>;
                let shape = |eps: &[gradscope::gpu::EntryPoint]| -> Shape {
                    eps.iter()
                        .map(|e| (e.name.clone(), e.bindings.iter().map(|b| (b.binding, b.name.clone(), b.read_only)).collect(), e.invocations))
                        .collect()
                };
                assert_eq!(shape(&r.entry_points), shape(&f32_reflection.entry_points), "{what}");
                assert_eq!(r.uniform_size, f32_reflection.uniform_size, "{name}.wgsl: uniform size");
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let mut expected = ACT_TYPED.to_vec();
    expected.sort_unstable();
    act_typed.sort_unstable();
    assert_eq!(act_typed, expected, "the act-typed shader files");
}

#[test]
fn fill_act_keeps_the_residual_uniform_layout() {
    // fill_act's `value` comes after N, so residual_forward/backward still read o0..o7, N.
    let (_, source) = SHADERS.iter().find(|(n, _)| *n == "residual").unwrap();
    let r = reflect("residual", &with_prelude(source)).unwrap();
    assert_eq!(r.uniform_size, 56);
    assert_eq!(r.bindings("fill_act"), Some(vec![12u32]));
    assert_eq!(r.bindings("residual_forward"), Some(vec![1u32, 2, 3]));
    assert_eq!(r.bindings("residual_backward"), Some(vec![9u32, 10, 11]));
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
    // prelude.wgsl is compiled in front of every file, not on its own; rows_subgroup is rows.wgsl
    // with the subgroup reduction of shaders/reduce/ appended (rows has the workgroup tree
    // appended), and matmul_gpu_128x64 is matmul_gpu.wgsl at 8 rows per invocation (matmul_gpu
    // at 4): no top-level files of their own
    let mut embedded: Vec<String> = SHADERS.iter().map(|(n, _)| n.to_string()).chain(["prelude".to_string()]).collect();
    embedded.retain(|n| n != "rows_subgroup" && n != "groupnorm_subgroup" && n != "matmul_gpu_128x64");
    embedded.sort();
    assert_eq!(gradscope::gpu::PRELUDE, std::fs::read_to_string(dir.join("prelude.wgsl")).unwrap());
    assert_eq!(on_disk, embedded);
}

#[test]
fn a_broken_shader_is_reported_with_its_name() {
    let bad = "@group(0) @binding(0) var<uniform> p: u32;\n@compute @workgroup_size(1) fn f() { let x: f32 = p; }";
    let err = reflect("broken", bad).unwrap_err().to_string();
    assert!(err.contains("broken.wgsl"), "{err}");
    // a read-only binding is reflected as such, with the width of its scalars
    let read_only = "enable f16;\nstruct P { n: u32 }\n@group(0) @binding(0) var<uniform> p: P;\n@group(0) @binding(1) var<storage, read> x: array<vec4<f16>>;\n@group(0) @binding(2) var<storage, read_write> y: array<f32>;\n@compute @workgroup_size(1) fn f() { y[0] = f32(x[p.n].x); }";
    let r = reflect("ro", read_only).unwrap();
    let b = &r.entry("f").unwrap().bindings;
    assert_eq!((b[0].binding, b[0].read_only, b[0].scalar_bytes, b[0].name.as_str()), (1, true, 2, "x"));
    assert_eq!((b[1].binding, b[1].read_only, b[1].scalar_bytes), (2, false, 4));
}

#[test]
fn an_entry_point_past_the_device_limits_is_refused_with_what_it_needs() {
    // 512 invocations and 32 KiB of workgroup memory: above WebGPU's guaranteed 256 and 16 KiB
    let big = "struct P { n: u32 }\n@group(0) @binding(0) var<uniform> p: P;\n@group(0) @binding(1) var<storage, read_write> y: array<f32>;\nvar<workgroup> t: array<f32, 8192>;\n@compute @workgroup_size(512) fn big(@builtin(local_invocation_index) l: u32) { t[l] = 1.0; workgroupBarrier(); y[l] = t[p.n]; }";
    let r = reflect("big", big).unwrap();
    let ep = r.entry("big").unwrap();
    assert_eq!((ep.invocations, ep.workgroup_bytes), (512, 32768));
    let err = check_limits("big", ep, &wgpu::Limits::default()).unwrap_err().to_string();
    assert!(err.contains("big.wgsl big") && err.contains("512 invocations") && err.contains("32768 bytes of workgroup memory"), "{err}");
    // the same kernel fits a device that offers more
    let roomy = wgpu::Limits {
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        max_compute_workgroup_storage_size: 65536,
        ..Default::default()
    };
    check_limits("big", ep, &roomy).unwrap();
}

#[test]
fn tint_gets_the_subgroups_directive_naga_rejects() {
    // naga 30 rejects `enable subgroups;`, Tint requires it before subgroup builtins: the
    // registry writes the Tint variant from the one source
    let uses = "@compute @workgroup_size(64) fn f(@builtin(subgroup_size) n: u32) { let s = subgroupAdd(1.0); }";
    assert_eq!(gradscope::gpu::for_tint(uses), format!("enable subgroups;\n{uses}"));
    assert_eq!(gradscope::gpu::for_tint(&format!("enable subgroups;\n{uses}")), format!("enable subgroups;\n{uses}"), "not twice");
    // only rows_subgroup and groupnorm_subgroup (the GPU family's subgroup row reductions) use
    // subgroups: their Tint variants get the directive, every other shader's is the compiled
    // source itself (the Dawn test compiles exactly these)
    for (name, source) in SHADERS {
        let compiled = with_prelude(source);
        let want = if name.ends_with("_subgroup") { format!("enable subgroups;\n{compiled}") } else { compiled };
        assert_eq!(gradscope::gpu::tint_source(name), want, "{name}");
    }
}
