//! gradscope's shaders and dispatches on a second WebGPU implementation: Chromium's Dawn/Tint,
//! headless, on SwiftShader (Chromium's software Vulkan). wgpu/naga is the first implementation
//! (the other tests); Dawn validates WGSL and API use differently in places (Tint's uniformity
//! analysis, limits, aliasing rules), and a browser build of gradscope runs on Dawn.
//!
//! `run_job` serves a directory of job files plus `tests/webgpu/runner.{html,js}` over HTTP on
//! 127.0.0.1, opens `runner.html?job=<job>` in headless Chromium and returns the JSON the page
//! POSTs to `/result`. Jobs (see runner.js): `compile` (shaders.json: every shader module and
//! every entry point's pipeline with gradscope's explicit layout) and `replay` (trace.json and
//! its binary files: recorded buffers, kernels and commands replayed, outputs compared).
//!
//! Needs Debian's `chromium` package (or `GRADSCOPE_CHROMIUM=/path/to/chrome`); without it these
//! tests fail, they never skip. `GRADSCOPE_CHROMIUM_ARGS` appends flags (whitespace-separated).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gradscope::gpu::{F16_SUFFIX, SHADERS, act_f16_source, for_tint, reflect, with_prelude};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The harness

/// Chromium's flags for WebGPU on SwiftShader, headless. Measured with Debian's chromium 156:
/// `--enable-unsafe-webgpu` is what gives `navigator.gpu.requestAdapter()` an adapter on Linux
/// (without it the page sees `navigator.gpu` but no adapter); Dawn then finds SwiftShader
/// (Vulkan, "google / swiftshader", a fallback adapter). `--use-webgpu-adapter=swiftshader` pins
/// that adapter on machines that also have a GPU, so every machine tests the same
/// implementation. No `--enable-features=Vulkan` or `--use-angle=swiftshader` is needed (they
/// only change how Chromium itself draws).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    // CI runs as root, where Chromium refuses to start with its sandbox
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--use-webgpu-adapter=swiftshader",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
];

/// The runner page and script, served next to every job's files.
fn runner_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("webgpu")
}

/// `GRADSCOPE_CHROMIUM`, else `chromium` on PATH.
fn chromium() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("GRADSCOPE_CHROMIUM") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("GRADSCOPE_CHROMIUM={} is not a file", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("chromium")).find(|p| p.is_file()).ok_or_else(|| {
        "the WebGPU (Dawn) tests need Chromium and found no `chromium` on PATH: \
         install Debian's package (sudo apt-get install chromium) or set GRADSCOPE_CHROMIUM \
         to a Chromium/Chrome binary"
            .to_string()
    })
}

enum Event {
    Result(String),
    Log(String),
}

/// The HTTP server of one job: a thread accepting connections (one thread per connection, since
/// Chromium opens several at once and may leave one idle), until dropped.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(dir: &Path, tx: mpsc::Sender<Event>) -> Result<Server, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding 127.0.0.1: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, flag) = (dir.to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (dir, tx) = (dir.clone(), tx.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &dir, &tx);
                });
            }
        });
        Ok(Server { port, stop })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // wake the accept loop so that it sees the flag
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file a GET path names: the runner's two files, else a file under `dir` (no `..`).
fn resolve(dir: &Path, url_path: &str) -> Option<PathBuf> {
    let rel = percent_decode(url_path.split(['?', '#']).next().unwrap_or(""));
    let rel = rel.trim_start_matches('/');
    if rel == "runner.html" || rel == "runner.js" {
        return Some(runner_dir().join(rel));
    }
    let rel = Path::new(rel);
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(dir.join(rel))
}

fn serve(stream: TcpStream, dir: &Path, tx: &mpsc::Sender<Event>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut stream = stream;
    let mut respond = |status: &str, content_type: &str, body: &[u8]| -> std::io::Result<()> {
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        stream.write_all(body)?;
        stream.flush()
    };
    match method {
        "GET" => match resolve(dir, path).and_then(|p| std::fs::read(&p).ok().map(|b| (p, b))) {
            Some((p, body)) => {
                let content_type = match p.extension().and_then(|e| e.to_str()) {
                    Some("html") => "text/html; charset=utf-8",
                    Some("js") => "text/javascript; charset=utf-8",
                    Some("json") => "application/json",
                    _ => "application/octet-stream",
                };
                respond("200 OK", content_type, &body)
            }
            None => respond("404 Not Found", "text/plain", b"not found"),
        },
        "POST" => {
            let mut body = vec![0; content_length];
            reader.read_exact(&mut body)?;
            let body = String::from_utf8_lossy(&body).into_owned();
            let event = match path {
                "/result" => Event::Result(body),
                "/log" => Event::Log(body),
                _ => return respond("404 Not Found", "text/plain", b"not found"),
            };
            let _ = tx.send(event);
            respond("200 OK", "text/plain", b"ok")
        }
        _ => respond("405 Method Not Allowed", "text/plain", b""),
    }
}

/// Chromium in a process group of its own, killed (the whole group) when dropped.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let killed = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !killed {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The last lines of Chromium's stderr, without the D-Bus noise of a machine without a session bus.
fn stderr_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text.lines().filter(|l| !l.contains("dbus/") && !l.trim().is_empty()).collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// Serves `dir` (and the runner) on a free port, opens `runner.html?job=<job>` in headless
/// Chromium with a fresh profile, and returns the JSON result the page POSTs, or an error with
/// the tail of Chromium's stderr and of the page's console when no result came within `timeout`.
/// The page's console lines are printed as they come (`cargo test -- --nocapture` shows them).
pub fn run_job(dir: &Path, job: &str, timeout: Duration) -> Result<Value, String> {
    let chromium = chromium()?;
    let (tx, rx) = mpsc::channel();
    let server = Server::start(dir, tx)?;
    let scratch = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let profile = scratch.path().join("profile");
    let stderr_path = scratch.path().join("chromium.stderr");
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
    let stdout = stderr.try_clone().map_err(|e| e.to_string())?;
    let url = format!("http://127.0.0.1:{}/runner.html?job={job}", server.port);
    let extra = std::env::var("GRADSCOPE_CHROMIUM_ARGS").unwrap_or_default();
    let start = Instant::now();
    let child = {
        use std::os::unix::process::CommandExt;
        Command::new(&chromium)
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra.split_whitespace())
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", chromium.display()))?
    };
    let mut browser = Browser(child);
    let mut console = Vec::new();
    let failure = |why: String, console: &[String]| {
        format!(
            "{why}\n--- the page's console (last lines) ---\n{}\n--- {}'s stderr (last lines) ---\n{}",
            console[console.len().saturating_sub(20)..].join("\n"),
            chromium.display(),
            stderr_tail(&stderr_path, 30)
        )
    };
    let body = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Result(body)) => break body,
            Ok(Event::Log(body)) => {
                let line = match serde_json::from_str::<Value>(&body) {
                    Ok(v) => format!("[{}] {}", v["level"].as_str().unwrap_or("log"), v["text"].as_str().unwrap_or("")),
                    Err(_) => body,
                };
                println!("page: {line}");
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = browser.0.try_wait() {
                    return Err(failure(format!("chromium exited ({status}) before the page sent a result"), &console));
                }
                if start.elapsed() > timeout {
                    drop(browser);
                    return Err(failure(format!("no result from the page within {timeout:?} (job {job})"), &console));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the server holds a sender"),
        }
    };
    drop(browser);
    println!("{job}: result after {:.1} s", start.elapsed().as_secs_f64());
    serde_json::from_str(&body).map_err(|e| failure(format!("the page's result is not JSON ({e}): {body}"), &console))
}

/// The errors of a result, one per line.
fn errors(result: &Value) -> String {
    result["errors"].as_array().map(|a| a.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// compile: every shader of the registry

/// shaders.json for the `compile` job: every shader file and the f16 instantiation of each
/// act-typed one, with the uniform size and each entry point's storage bindings from naga's
/// reflection. Every storage binding is `read_only: false` for now (the registry's convention:
/// every storage binding is declared read_write); once the reflection records per-binding
/// access, `read_only` comes from there. The runner builds each entry point's layout from this.
fn shader_manifest() -> Value {
    let mut shaders = Vec::new();
    let mut push = |name: String, source: &str, needs_f16: bool| {
        let r = reflect(&name, source).unwrap_or_else(|e| panic!("{e}"));
        let entry_points: Vec<Value> = r
            .entry_points
            .iter()
            .map(|ep| {
                let bindings: Vec<Value> = ep.bindings.iter().map(|b| json!({"binding": b.binding, "read_only": b.read_only})).collect();
                json!({"name": ep.name, "bindings": bindings})
            })
            .collect();
        shaders.push(json!({
            "name": name,
            // the variant Tint accepts, derived from the naga source by the registry
            "source": for_tint(source),
            "needs_f16": needs_f16,
            // compiled where the adapter has 'subgroups' (SwiftShader has)
            "needs_subgroups": for_tint(source).contains("enable subgroups;"),
            "uniform_size": r.uniform_size,
            "entry_points": entry_points,
        }));
    };
    // as the registry compiles them: with the prelude
    for (name, source) in SHADERS {
        push(name.to_string(), &with_prelude(source), false);
        if let Some(f16) = act_f16_source(source) {
            push(format!("{name}{F16_SUFFIX}"), &with_prelude(&f16), true);
        }
    }
    json!({ "shaders": shaders })
}

#[test]
fn dawn_compiles_every_shader() {
    let manifest = shader_manifest();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shaders.json"), manifest.to_string()).unwrap();
    let result = run_job(dir.path(), "compile", Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}"));
    let features: Vec<&str> = result["features"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let has_f16 = features.contains(&"shader-f16");
    println!("adapter: {}", result["adapter"]);
    println!("features: {features:?}");
    let shaders = manifest["shaders"].as_array().unwrap();
    let checked: Vec<&Value> = shaders.iter().filter(|s| has_f16 || !s["needs_f16"].as_bool().unwrap()).collect();
    let entry_points: usize = checked.iter().map(|s| s["entry_points"].as_array().unwrap().len()).sum();
    if has_f16 {
        println!("the adapter has shader-f16: the f16 instantiations are compiled too");
    } else {
        let skipped: Vec<&str> = result["skipped"].as_array().unwrap().iter().filter_map(|s| s["shader"].as_str()).collect();
        println!("the adapter lacks shader-f16: skipped {skipped:?}");
        let f16: Vec<&str> = shaders.iter().filter(|s| s["needs_f16"].as_bool().unwrap()).filter_map(|s| s["name"].as_str()).collect();
        assert_eq!(skipped, f16, "the skipped shaders are exactly the f16 ones");
    }
    assert!(result["ok"].as_bool().unwrap(), "Dawn/Tint rejected gradscope's shaders:\n{}", errors(&result));
    assert_eq!(result["compiled"].as_u64().unwrap() as usize, checked.len(), "shader modules compiled");
    assert_eq!(result["pipelines"].as_u64().unwrap() as usize, entry_points, "compute pipelines built");
    println!("{} shader modules, {} pipelines", checked.len(), entry_points);
}

// ---------------------------------------------------------------------------------------------
// replay: a hand-written trace

/// out = scale * (x + w * y) over n elements: x, y and out are ranges of one buffer (all
/// writable: one buffer may not be both read-only and writable storage in a dispatch), w is
/// read-only in another buffer.
const AXPY: &str = r#"
struct Params { n: u32, scale: f32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn axpy(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x;
    if (i >= p.n) { return; }
    out[i] = p.scale * (x[i] + w[i] * y[i]);
}
"#;

const N: usize = 64;
// byte offsets of the ranges in the slab (256-byte aligned, as WebGPU requires)
const X_AT: usize = 0;
const Y_AT: usize = 512;
const OUT_AT: usize = 1024;
const SLAB: usize = 2048;
const W_AT: usize = 256;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn put(slab: &mut [f32], byte_offset: usize, v: &[f32]) {
    slab[byte_offset / 4..byte_offset / 4 + v.len()].copy_from_slice(v);
}

/// Writes trace.json and its binary files into `dir`: two dispatches of AXPY with different
/// uniforms (dynamic offsets 0 and 256), a write between them, copies, and a clear. Values are
/// small dyadic fractions, so every result is exact whether or not the device fuses the
/// multiply-add. `y_binding` is the slab range bound as y (offset, size). `tamper` may change
/// the expected outputs (by label) before they are written.
fn write_axpy_trace(dir: &Path, y_binding: (usize, usize), tamper: impl Fn(&str, &mut Vec<f32>)) {
    let x0: Vec<f32> = (0..N).map(|i| i as f32 / 4.0).collect();
    let x1: Vec<f32> = (0..N).map(|i| 8.0 - i as f32 / 8.0).collect();
    let y: Vec<f32> = (0..N).map(|i| (i % 5) as f32 - 2.0).collect();
    let weights: Vec<f32> = (0..256).map(|i| (i % 7) as f32 / 8.0 - 0.25).collect();
    let w = &weights[W_AT / 4..W_AT / 4 + N];

    let mut slab = vec![0f32; SLAB / 4];
    put(&mut slab, X_AT, &x0);
    put(&mut slab, Y_AT, &y);
    let mut uniforms = vec![0u8; 512];
    for (at, n, scale) in [(0, N as u32, 1.0f32), (256, 32, 2.0)] {
        uniforms[at..at + 4].copy_from_slice(&n.to_le_bytes());
        uniforms[at + 4..at + 8].copy_from_slice(&scale.to_le_bytes());
    }
    let scratch: Vec<u8> = (0..256u32).map(|i| (i * 7 + 1) as u8).collect();

    // The CPU's answer.
    let out1: Vec<f32> = (0..N).map(|i| x0[i] + w[i] * y[i]).collect();
    let mut out2 = out1.clone();
    for i in 0..32 {
        out2[i] = 2.0 * (x1[i] + w[i] * y[i]);
    }
    let mut result = out1.clone();
    result.extend_from_slice(&out2);
    let mut slab_after = slab.clone();
    put(&mut slab_after, X_AT, &x1);
    put(&mut slab_after, OUT_AT, &out2);
    tamper("result", &mut result);
    tamper("slab", &mut slab_after);

    let files: [(&str, Vec<u8>); 7] = [
        ("slab.bin", f32_bytes(&slab)),
        ("weights.bin", f32_bytes(&weights)),
        ("uniforms.bin", uniforms),
        ("scratch.bin", scratch),
        ("write-x1.bin", f32_bytes(&x1)),
        ("expected-result.bin", f32_bytes(&result)),
        ("expected-slab.bin", f32_bytes(&slab_after)),
    ];
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::write(dir.join("expected-scratch.bin"), [0u8; 256]).unwrap();

    let dispatch = |uniform_at: usize, label: &str| {
        json!({"op": "dispatch", "kernel": 0, "uniform": {"buffer": 2, "offset": uniform_at, "size": 16},
               "bindings": [
                   {"binding": 1, "buffer": 0, "offset": OUT_AT, "size": N * 4},
                   {"binding": 2, "buffer": 1, "offset": W_AT, "size": N * 4},
                   {"binding": 3, "buffer": 0, "offset": X_AT, "size": N * 4},
                   {"binding": 4, "buffer": 0, "offset": y_binding.0, "size": y_binding.1}],
               "workgroups": [1, 1, 1], "label": label})
    };
    let trace = json!({
        "shaders": [{"name": "axpy", "source": AXPY, "needs_f16": false}],
        "kernels": [{"id": 0, "shader": "axpy", "entry": "axpy", "uniform_size": 16,
                     "bindings": [{"binding": 1, "read_only": false}, {"binding": 2, "read_only": true},
                                  {"binding": 3, "read_only": false}, {"binding": 4, "read_only": false}]}],
        "buffers": [
            {"id": 0, "label": "slab", "size": SLAB, "usage": ["storage", "copy_src", "copy_dst"], "init": "slab.bin"},
            {"id": 1, "label": "weights", "size": 1024, "usage": ["storage", "copy_dst"], "init": "weights.bin"},
            {"id": 2, "label": "uniforms", "size": 512, "usage": ["uniform", "copy_dst"], "init": "uniforms.bin"},
            {"id": 3, "label": "result", "size": 512, "usage": ["storage", "copy_src", "copy_dst"]},
            {"id": 4, "label": "scratch", "size": 256, "usage": ["storage", "copy_src", "copy_dst"], "init": "scratch.bin"},
        ],
        "commands": [
            dispatch(0, "axpy #0"),
            {"op": "copy", "src": 0, "src_offset": OUT_AT, "dst": 3, "dst_offset": 0, "size": N * 4},
            {"op": "write", "buffer": 0, "offset": X_AT, "data": "write-x1.bin"},
            dispatch(256, "axpy #1"),
            {"op": "copy", "src": 0, "src_offset": OUT_AT, "dst": 3, "dst_offset": N * 4, "size": N * 4},
            {"op": "clear", "buffer": 4},
        ],
        "outputs": [
            {"buffer": 3, "label": "result", "offset": 0, "size": 512, "dtype": "f32", "expected": "expected-result.bin", "rtol": 1e-6},
            {"buffer": 0, "label": "slab", "offset": 0, "size": SLAB, "dtype": "f32", "expected": "expected-slab.bin", "rtol": 1e-6},
            {"buffer": 4, "label": "scratch", "offset": 0, "size": 256, "dtype": "u32", "expected": "expected-scratch.bin", "rtol": 0.0},
        ],
    });
    std::fs::write(dir.join("trace.json"), serde_json::to_string_pretty(&trace).unwrap()).unwrap();
}

fn output<'a>(result: &'a Value, label: &str) -> &'a Value {
    result["outputs"].as_array().unwrap().iter().find(|o| o["label"] == label).unwrap_or_else(|| panic!("no output {label}: {result}"))
}

fn replay(dir: &Path) -> Value {
    let result = run_job(dir, "replay", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    result
}

#[test]
fn dawn_replays_a_hand_written_trace() {
    let dir = tempfile::tempdir().unwrap();
    write_axpy_trace(dir.path(), (Y_AT, N * 4), |_, _| {});
    let result = replay(dir.path());
    assert!(result["ok"].as_bool().unwrap(), "the replay failed:\n{}\n{result}", errors(&result));
    assert_eq!(result["dispatches"], 2);
    assert_eq!(result["outputs"].as_array().unwrap().len(), 3);
    for label in ["result", "slab", "scratch"] {
        assert_eq!(output(&result, label)["rel"], 0.0, "{label}: the values are exact");
    }
}

/// The comparison has teeth: one expected value off by 1e-3 of the output's largest, and one
/// expected NaN where the device computes a number, each fail their output (and nothing else).
#[test]
fn dawn_replay_fails_on_a_wrong_expected_value() {
    let dir = tempfile::tempdir().unwrap();
    write_axpy_trace(dir.path(), (Y_AT, N * 4), |label, v| match label {
        "result" => {
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            v[N + 5] += 1e-3 * max;
        }
        "slab" => v[OUT_AT / 4 + 40] = f32::NAN,
        _ => {}
    });
    let result = replay(dir.path());
    assert!(!result["ok"].as_bool().unwrap(), "a wrong expected value passed: {result}");
    assert!(errors(&result).is_empty(), "no device error: {}", errors(&result));
    let r = output(&result, "result");
    assert_eq!(r["ok"], false);
    let rel = r["rel"].as_f64().unwrap();
    assert!((rel - 1e-3).abs() < 1e-5, "result: relative error {rel}, expected 1e-3");
    assert_eq!(r["worst"]["index"], N + 5);
    let s = output(&result, "slab");
    assert_eq!(s["ok"], false);
    assert_eq!(s["nan_mismatches"], 1);
    assert_eq!(s["first_nan_mismatch"]["index"], OUT_AT / 4 + 40);
    assert_eq!(output(&result, "scratch")["ok"], true);
}

/// Two writable bindings of one dispatch whose ranges overlap (out at 1024..1280 and y at
/// 768..1280 of the slab): WebGPU forbids it, and Dawn must say so.
#[test]
fn dawn_rejects_overlapping_writable_bindings() {
    let dir = tempfile::tempdir().unwrap();
    write_axpy_trace(dir.path(), (OUT_AT - 256, 512), |_, _| {});
    let result = replay(dir.path());
    assert!(!result["ok"].as_bool().unwrap(), "overlapping writable bindings passed: {result}");
    let errs = errors(&result).to_lowercase();
    assert!(
        errs.contains("alias") || errs.contains("overlap"),
        "the errors do not mention aliasing or overlap:\n{}",
        errors(&result)
    );
}

/// The compile job has teeth: Tint's errors (with line numbers) and warnings, an entry point
/// over WebGPU's default storage-buffer limit (8; SwiftShader's adapter offers more, the device
/// must not get it), and a layout that disagrees with the shader each come back as errors.
#[test]
fn dawn_compile_reports_shader_and_layout_errors() {
    let storage = |n: u32| -> String {
        (1..=n).map(|b| format!("@group(0) @binding({b}) var<storage, read_write> s{b}: array<f32>;\n")).collect()
    };
    let head = "struct P { n: u32 }\n@group(0) @binding(0) var<uniform> p: P;\n";
    let nonuniform = format!(
        "{head}{}var<workgroup> tile: array<f32, 64>;\n\
         @compute @workgroup_size(64)\n\
         fn barrier_in_branch(@builtin(local_invocation_index) l: u32) {{\n\
         \x20   if (s1[l] > 0.0) {{ workgroupBarrier(); }}\n\
         \x20   s1[l] = tile[l];\n}}\n",
        storage(1)
    );
    let unreachable = format!(
        "{head}{}@compute @workgroup_size(64)\n\
         fn early_return(@builtin(global_invocation_id) g: vec3<u32>) {{\n\
         \x20   return;\n\
         \x20   s1[g.x] = 1.0;\n}}\n",
        storage(1)
    );
    let nine: String = (1..=9).map(|b| format!("    s{b}[g.x] = 0.0;\n")).collect();
    let nine = format!(
        "{head}{}@compute @workgroup_size(64)\nfn nine(@builtin(global_invocation_id) g: vec3<u32>) {{\n{nine}}}\n",
        storage(9)
    );
    let good = format!(
        "{head}{}@compute @workgroup_size(64)\nfn copy(@builtin(global_invocation_id) g: vec3<u32>) {{\n\
         \x20   if (g.x < p.n) {{ s1[g.x] = s2[g.x]; }}\n}}\n",
        storage(2)
    );
    let bindings = |n: u32, read_only: bool| -> Vec<Value> {
        (1..=n).map(|b| json!({"binding": b, "read_only": read_only && b == 2})).collect()
    };
    let shader = |name: &str, source: &str, entry: &str, bindings: Vec<Value>| {
        json!({"name": name, "source": source, "needs_f16": false, "uniform_size": 4,
               "entry_points": [{"name": entry, "bindings": bindings}]})
    };
    let manifest = json!({"shaders": [
        shader("nonuniform", &nonuniform, "barrier_in_branch", bindings(1, false)),
        shader("unreachable", &unreachable, "early_return", bindings(1, false)),
        shader("nine", &nine, "nine", bindings(9, false)),
        shader("good", &good, "copy", bindings(2, false)),
        // the shader's s2 is read_write, the layout says read-only
        shader("mismatch", &good, "copy", bindings(2, true)),
    ]});
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shaders.json"), manifest.to_string()).unwrap();
    let result = run_job(dir.path(), "compile", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", errors(&result));
    assert_eq!(result["ok"], false);
    let errs = result["errors"].as_array().unwrap();
    let of = |shader: &str| -> Vec<&Value> { errs.iter().filter(|e| e["shader"] == shader).collect() };
    let nonuniform = of("nonuniform");
    assert!(!nonuniform.is_empty() && nonuniform[0]["type"] == "error" && nonuniform[0]["line"] == 7, "{nonuniform:?}");
    let unreachable = of("unreachable");
    assert!(!unreachable.is_empty() && unreachable[0]["type"] == "warning" && unreachable[0]["line"] == 7, "{unreachable:?}");
    assert!(!of("nine").is_empty() && of("nine").iter().all(|e| e["entry"] == "nine"), "{:?}", of("nine"));
    assert!(of("good").is_empty(), "{:?}", of("good"));
    assert!(!of("mismatch").is_empty() && of("mismatch").iter().all(|e| e["entry"] == "copy"), "{:?}", of("mismatch"));
    // modules: all but the one with an error; pipelines: unreachable (a warning only) and good
    assert_eq!(result["compiled"], 4);
    assert_eq!(result["pipelines"], 2);
}

/// A real training window of gradscope, recorded as it is submitted (`Gpu::trace_next_submission`:
/// the window's micro-batches and its optimizer step, one submission) on lavapipe, replayed in
/// Dawn: every dispatch, bound range and uniform as recorded, and every buffer the submission
/// writes compared with what wgpu produced (the gradients, the AdamW state, the updated
/// weights, the window's loss figures, the activations).
fn replay_a_training_window(overrides: &[&str]) -> Value {
    replay_a_training_window_on(common::gpu(), overrides)
}

/// `replay_a_training_window` recorded on `g` (whose kernel family follows `g.kind`).
fn replay_a_training_window_on(g: gradscope::gpu::Gpu, overrides: &[&str]) -> Value {
    use gradscope::train::{TrainConfig, Trainer};
    let ov: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let mut t = Trainer::new(&g, TrainConfig::load(None, &ov).unwrap()).unwrap();
    // a first window builds every program; the second one is recorded
    t.train_step().unwrap();
    g.trace_next_submission();
    let (m, _) = t.train_step().unwrap();
    let trace = g.take_trace().unwrap();
    assert!(g.take_errors().is_empty());
    println!("window loss {:.6}, norm {:.6}; {} dispatches", m.train_loss, m.grad_norm, trace.dispatches());
    let dir = tempfile::tempdir().unwrap();
    // Gradients, losses, activations and the AdamW moments at 1e-5. The weights after AdamW are
    // ill-conditioned where a gradient element is near AdamW's eps (1e-8): there m / sqrt(v)
    // turns on the last bits of the gradient, and such an element moves by up to a learning
    // rate on one implementation's rounding and not the other's (measured: 1.6e-3 of the
    // largest weight in the CNN, 1e-6 in the GPT); the update itself ("parameters before the
    // step", which holds it after the step) and the partial sums of its norm are left out.
    let rtol = |label: &str| match label {
        "parameters before the step" | "norm partials" => None,
        "parameters" => Some(1e-2),
        _ => Some(1e-5),
    };
    trace.write(dir.path(), rtol).unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(dir.path().join("trace.json")).unwrap()).unwrap();
    let mut result = run_job(dir.path(), "replay", Duration::from_secs(100)).unwrap_or_else(|e| panic!("{e}"));
    for o in result["outputs"].as_array().into_iter().flatten() {
        println!("  {:<32} rel {:>10} max_abs {:>10} {}", o["label"].as_str().unwrap_or("?"), o["rel"], o["max_abs"], o["ok"]);
    }
    assert!(result["ok"].as_bool().unwrap(), "Dawn's replay of the window differs or was rejected:\n{}", errors(&result));
    assert_eq!(result["dispatches"].as_u64().unwrap() as usize, trace.dispatches());
    for label in ["parameters", "gradients", "adamw m", "adamw v", "window figures"] {
        assert!(output(&result, label)["ok"].as_bool().unwrap(), "{label}");
    }
    // the shader files the window ran, for the caller
    result["shader_files"] = json!(written["shaders"].as_array().unwrap().iter().map(|s| s["name"].clone()).collect::<Vec<_>>());
    result
}

#[test]
fn dawn_replays_a_reference_gpt_window() {
    // the reference GPT (2 layers, 128 channels, block 64, Tiny Shakespeare), B 4 x K 2
    replay_a_training_window(&["--micro_batch", "4", "--accum_steps", "2"]);
}

/// The GPU kernel family (flash attention, LayerNorm one workgroup per row with subgroup sums
/// where the adapter has them, column-sum bias gradients), recorded on this adapter with the
/// device kind set to GPU, replayed in Dawn.
#[test]
fn dawn_replays_a_gpu_family_gpt_window() {
    let g = common::gpu().with_kernels(gradscope::gpu::KernelSet::Gpu);
    let subgroups = g.has_subgroups();
    let result = replay_a_training_window_on(g, &["--micro_batch", "4", "--accum_steps", "2"]);
    let files: Vec<&str> = result["shader_files"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    println!("shader files: {files:?}");
    let rows = if subgroups { "rows_subgroup" } else { "rows" };
    for file in ["flash_attention", rows] {
        assert!(files.contains(&file), "the GPU family's window runs {file}.wgsl: {files:?}");
    }
    assert!(!files.contains(&"attention") && !files.contains(&"layernorm"), "{files:?}");
}

/// The CNN with the GPU family (GroupNorm one workgroup per (image, group)), replayed in Dawn.
#[test]
fn dawn_replays_a_gpu_family_cnn_window() {
    let g = common::gpu().with_kernels(gradscope::gpu::KernelSet::Gpu);
    let file = if g.has_subgroups() { "groupnorm_subgroup" } else { "groupnorm" };
    let result = replay_a_training_window_on(g, &["--model", "cnn", "--dataset", "digits", "--norm", "group", "--micro_batch", "16", "--accum_steps", "2"]);
    let files: Vec<&str> = result["shader_files"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    println!("shader files: {files:?}");
    assert!(files.contains(&file), "the GPU family's CNN window runs {file}.wgsl: {files:?}");
}

#[test]
fn dawn_replays_a_cnn_window() {
    replay_a_training_window(&["--model", "cnn", "--dataset", "digits", "--norm", "batch", "--micro_batch", "16", "--accum_steps", "2"]);
}

/// One buffer bound read-only (w) and writable (out, x, y) in one dispatch, at ranges that do
/// not overlap: WebGPU's usage rules forbid it whatever the ranges, which is why gradscope
/// declares `read` only bindings whose buffer its kernels never write in the same dispatch
/// (and refuses the mix when a program is recorded, `tests/bindings.rs`).
#[test]
fn dawn_rejects_a_buffer_bound_read_only_and_writable() {
    let dir = tempfile::tempdir().unwrap();
    write_axpy_trace(dir.path(), (Y_AT, N * 4), |_, _| {});
    let path = dir.path().join("trace.json");
    let mut trace: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for c in trace["commands"].as_array_mut().unwrap().iter_mut().filter(|c| c["op"] == "dispatch") {
        // w moves into the slab, behind everything else
        c["bindings"][1] = json!({"binding": 2, "buffer": 0, "offset": OUT_AT + 512, "size": N * 4});
    }
    std::fs::write(&path, serde_json::to_vec(&trace).unwrap()).unwrap();
    let result = replay(dir.path());
    assert!(!result["ok"].as_bool().unwrap(), "a buffer bound read-only and writable passed: {result}");
    let errs = errors(&result);
    println!("{errs}");
    assert!(errs.to_lowercase().contains("usage") || errs.to_lowercase().contains("writable"), "{errs}");
}
