// gradscope's WebGPU runner: checks gradscope's shaders and replays its recorded GPU work on the
// browser's WebGPU implementation (in CI: Chromium's Dawn/Tint on SwiftShader). tests/webgpu.rs
// serves this page next to a job's files and opens runner.html?job=<job>; the page does the job
// and POSTs exactly one JSON result to /result (console output goes to /log on the way).
//
// Jobs:
//   compile  shaders.json: every shader module is compiled (Tint's errors and warnings are
//            failures) and every entry point gets a compute pipeline with gradscope's explicit
//            layout (binding 0: uniform with a dynamic offset; then the listed storage bindings).
//            Result: {ok, adapter, features, compiled, pipelines, skipped, errors}.
//   replay   trace.json and the binary files it names: buffers, kernels and commands exactly as
//            gradscope recorded them, then every output is read back and compared with the
//            expected bytes. Result: {ok, adapter, features, dispatches, outputs, errors}.
//
// The device always has the adapter's default limits (WebGPU's guaranteed ones): gradscope must
// run within them, so nothing here raises a limit. 'shader-f16' is requested when the adapter
// has it; shaders that need it are skipped (compile) or fail the job (replay) when it lacks it.
// 'subgroups' likewise: requested when the adapter has it, its shaders skipped otherwise.
//
// Every device call that can fail validation runs in error scopes (validation, out-of-memory,
// internal); an 'uncapturederror' listener catches anything outside them. Every entry of
// `errors` is an object with a `message` (Dawn's or Tint's text) and where it came from.

'use strict';

// ---------------------------------------------------------------------------------------------
// Reporting

let logChain = Promise.resolve();

function postJson(path, value) {
  return fetch(path, {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify(value),
  });
}

function text(value) {
  if (typeof value === 'string') return value;
  if (value instanceof Error) return value.stack || String(value);
  try { return JSON.stringify(value); } catch (_) { return String(value); }
}

// Console messages are forwarded to the harness, in order, before the result.
for (const level of ['log', 'info', 'warn', 'error']) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    original(...args);
    const line = args.map(text).join(' ');
    logChain = logChain.then(() => postJson('/log', {level, text: line})).catch(() => {});
  };
}

let reported = false;
async function report(result) {
  if (reported) return;
  reported = true;
  await logChain;
  await postJson('/result', result);
  document.title = result.ok ? 'ok' : 'failed';
}

window.addEventListener('error', (e) =>
  report({ok: false, errors: [{where: 'page', message: `uncaught ${e.message} (${e.filename}:${e.lineno})`}]}));
window.addEventListener('unhandledrejection', (e) =>
  report({ok: false, errors: [{where: 'page', message: `unhandled rejection: ${text(e.reason)}`}]}));

// A number for JSON: finite numbers as they are, Infinity and NaN as strings (JSON has neither).
function num(x) {
  return Number.isFinite(x) ? x : String(x);
}

// ---------------------------------------------------------------------------------------------
// Files

function fileUrl(name) {
  return name.split('/').map(encodeURIComponent).join('/');
}

async function fetchJson(name) {
  const response = await fetch(fileUrl(name), {cache: 'no-store'});
  if (!response.ok) throw new Error(`fetching ${name}: HTTP ${response.status}`);
  return response.json();
}

async function fetchBytes(name) {
  const response = await fetch(fileUrl(name), {cache: 'no-store'});
  if (!response.ok) throw new Error(`fetching ${name}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

// ---------------------------------------------------------------------------------------------
// Adapter, device, error scopes

async function getAdapter() {
  if (!navigator.gpu) {
    throw new Error('navigator.gpu is missing: this browser does not expose WebGPU here');
  }
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    throw new Error('navigator.gpu.requestAdapter() gave no adapter (Chromium needs --enable-unsafe-webgpu on Linux)');
  }
  return adapter;
}

function describeAdapter(adapter) {
  const info = adapter.info || {};
  const parts = [info.vendor, info.architecture, info.device, info.description].filter(Boolean);
  const fallback = info.isFallbackAdapter ? ' (fallback adapter)' : '';
  return (parts.join(' / ') || 'unnamed adapter') + fallback;
}

// The device with the adapter's default limits (no requiredLimits), 'shader-f16' if asked, and
// 'subgroups' when the adapter has it (the GPU family's row kernels in rows_subgroup use them).
async function getDevice(adapter, wantF16, errors) {
  const features = wantF16 ? ['shader-f16'] : [];
  if (adapter.features.has('subgroups')) features.push('subgroups');
  const device = await adapter.requestDevice({
    label: 'gradscope',
    requiredFeatures: features,
  });
  device.addEventListener('uncapturederror', (e) =>
    errors.push({where: 'uncaptured error', message: e.error.message}));
  device.lost.then((info) => {
    if (info.reason !== 'destroyed') errors.push({where: 'device lost', message: `${info.reason}: ${info.message}`});
  });
  return device;
}

const FILTERS = ['internal', 'out-of-memory', 'validation'];

// Runs f() inside error scopes. Returns {value, error}: f's value, and a promise of the first
// error message (or null). The scopes are popped at once, so several scoped calls can be in
// flight before their errors are awaited.
function scoped(device, f) {
  for (const filter of FILTERS) device.pushErrorScope(filter);
  let value;
  let thrown = null;
  try {
    value = f();
  } catch (e) {
    thrown = e;
  }
  const pops = FILTERS.map(() => device.popErrorScope()).reverse();
  const error = Promise.all(pops).then((errs) => {
    if (thrown) return `exception: ${thrown.message || String(thrown)}`;
    const e = errs.find((x) => x);
    return e ? e.message : null;
  });
  return {value, error};
}

// The explicit layout gradscope uses: binding 0 a uniform with a dynamic offset and
// minBindingSize uniform_size, then the storage bindings ('storage' or 'read-only-storage').
function explicitLayout(device, label, uniformSize, bindings) {
  const entries = [{
    binding: 0,
    visibility: GPUShaderStage.COMPUTE,
    buffer: {type: 'uniform', hasDynamicOffset: true, minBindingSize: uniformSize},
  }];
  for (const b of bindings) {
    entries.push({
      binding: b.binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: {type: b.read_only ? 'read-only-storage' : 'storage'},
    });
  }
  const bindGroupLayout = device.createBindGroupLayout({label, entries});
  const pipelineLayout = device.createPipelineLayout({label, bindGroupLayouts: [bindGroupLayout]});
  return {bindGroupLayout, pipelineLayout};
}

// Compiles one shader module. Tint's messages of type error (and, when `strict`, warning) are
// pushed to `errors` with the shader's name and line. Returns the module, or null when it has
// errors (its pipelines would only repeat them).
async function compileModule(device, shader, errors, strict) {
  const m = scoped(device, () => device.createShaderModule({label: shader.name, code: shader.source}));
  let broken = false;
  const info = await m.value.getCompilationInfo();
  for (const msg of info.messages) {
    const where = {shader: shader.name, line: msg.lineNum, column: msg.linePos, type: msg.type};
    if (msg.type === 'error' || (strict && msg.type === 'warning')) {
      errors.push({...where, message: msg.message});
      if (msg.type === 'error') broken = true;
    } else {
      console.log(`${shader.name}:${msg.lineNum}:${msg.linePos}: ${msg.type}: ${msg.message}`);
    }
  }
  const scopeError = await m.error;
  if (scopeError) {
    errors.push({shader: shader.name, where: 'createShaderModule', message: scopeError});
    broken = true;
  }
  return broken ? null : m.value;
}

// ---------------------------------------------------------------------------------------------
// compile

async function compileJob() {
  const manifest = await fetchJson('shaders.json');
  const adapter = await getAdapter();
  const hasF16 = adapter.features.has('shader-f16');
  const errors = [];
  const skipped = [];
  const result = {
    ok: false,
    adapter: describeAdapter(adapter),
    features: [...adapter.features].sort(),
    compiled: 0,
    pipelines: 0,
    skipped,
    errors,
  };
  const device = await getDevice(adapter, hasF16, errors);
  const pending = [];
  for (const shader of manifest.shaders) {
    if (shader.needs_f16 && !hasF16) {
      skipped.push({
        shader: shader.name,
        entry_points: shader.entry_points.map((e) => e.name),
        reason: "the adapter lacks the 'shader-f16' feature",
      });
      continue;
    }
    if (shader.needs_subgroups && !adapter.features.has('subgroups')) {
      skipped.push({
        shader: shader.name,
        entry_points: shader.entry_points.map((e) => e.name),
        reason: "the adapter lacks the 'subgroups' feature",
      });
      continue;
    }
    const module = await compileModule(device, shader, errors, true);
    if (!module) continue;
    result.compiled++;
    for (const entry of shader.entry_points) {
      const label = `${shader.name}.${entry.name}`;
      const layout = scoped(device, () => explicitLayout(device, label, shader.uniform_size, entry.bindings));
      const pipeline = scoped(device, () => device.createComputePipeline({
        label,
        layout: layout.value.pipelineLayout,
        compute: {module, entryPoint: entry.name},
      }));
      pending.push(Promise.all([layout.error, pipeline.error]).then(([layoutError, pipelineError]) => {
        if (layoutError) errors.push({shader: shader.name, entry: entry.name, where: 'layout', message: layoutError});
        if (pipelineError) errors.push({shader: shader.name, entry: entry.name, where: 'createComputePipeline', message: pipelineError});
        if (!layoutError && !pipelineError) result.pipelines++;
      }));
    }
  }
  await Promise.all(pending);
  await device.queue.onSubmittedWorkDone();
  result.ok = errors.length === 0;
  device.destroy();
  return result;
}

// ---------------------------------------------------------------------------------------------
// replay

const USAGES = {
  storage: GPUBufferUsage.STORAGE,
  uniform: GPUBufferUsage.UNIFORM,
  copy_src: GPUBufferUsage.COPY_SRC,
  copy_dst: GPUBufferUsage.COPY_DST,
  index: GPUBufferUsage.INDEX,
  vertex: GPUBufferUsage.VERTEX,
  indirect: GPUBufferUsage.INDIRECT,
  query_resolve: GPUBufferUsage.QUERY_RESOLVE,
  // Mapping usages are dropped: outputs are read back through the runner's own staging
  // buffers, and MAP_READ/MAP_WRITE cannot be combined with COPY_SRC/COPY_DST both.
  map_read: 0,
  map_write: 0,
};

class TraceError extends Error {}

function f16ToF32(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

// Little-endian bytes as numbers of a dtype (f32, f16 or u32).
function decode(bytes, dtype) {
  const size = {f32: 4, f16: 2, u32: 4}[dtype];
  if (!size) throw new TraceError(`unknown dtype ${dtype} (f32, f16 or u32)`);
  if (bytes.byteLength % size) throw new TraceError(`${bytes.byteLength} bytes is not a whole number of ${dtype}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.byteLength / size;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    if (dtype === 'f32') out[i] = view.getFloat32(i * 4, true);
    else if (dtype === 'u32') out[i] = view.getUint32(i * 4, true);
    else out[i] = f16ToF32(view.getUint16(i * 2, true));
  }
  return out;
}

// The denominator's floor in the relative error (an all-zero expected output).
const TINY = 1e-30;

// max|a-b| / max(max|b|, TINY) over the elements where neither is NaN (max|b| over finite b;
// equal infinities differ by 0); NaN in one but not the other is a mismatch of its own.
function compare(got, expected, rtol) {
  let maxAbs = 0;
  let maxRef = 0;
  let worst = -1;
  let nanMismatches = 0;
  let firstNanMismatch = -1;
  for (let i = 0; i < expected.length; i++) {
    const a = got[i];
    const b = expected[i];
    if (Number.isNaN(a) || Number.isNaN(b)) {
      if (Number.isNaN(a) !== Number.isNaN(b)) {
        nanMismatches++;
        if (firstNanMismatch < 0) firstNanMismatch = i;
      }
      continue;
    }
    if (Number.isFinite(b)) maxRef = Math.max(maxRef, Math.abs(b));
    const d = a === b ? 0 : Math.abs(a - b);
    if (d > maxAbs) {
      maxAbs = d;
      worst = i;
    }
  }
  const rel = maxAbs / Math.max(maxRef, TINY);
  const out = {
    elements: expected.length,
    max_abs: num(maxAbs),
    rel: num(rel),
    rtol,
    nan_mismatches: nanMismatches,
    ok: nanMismatches === 0 && rel <= rtol,
  };
  if (worst >= 0) out.worst = {index: worst, got: num(got[worst]), expected: num(expected[worst])};
  if (firstNanMismatch >= 0) {
    out.first_nan_mismatch = {index: firstNanMismatch, got: num(got[firstNanMismatch]), expected: num(expected[firstNanMismatch])};
  }
  return out;
}

// Bind groups and compute passes are labelled "cmd[i] ..." so that Dawn's messages about the
// encoder (which arrive when the encoder is finished) name the command they are about.
function commandOf(message) {
  const m = /cmd\[(\d+)\]/.exec(message);
  return m ? Number(m[1]) : null;
}

async function replayJob() {
  const trace = await fetchJson('trace.json');
  const adapter = await getAdapter();
  const hasF16 = adapter.features.has('shader-f16');
  const errors = [];
  const result = {
    ok: false,
    adapter: describeAdapter(adapter),
    features: [...adapter.features].sort(),
    dispatches: 0,
    outputs: [],
    errors,
  };
  const needsF16 = trace.shaders.filter((s) => s.needs_f16).map((s) => s.name);
  if (needsF16.length && !hasF16) {
    result.skipped = `the trace needs 'shader-f16' (${needsF16.join(', ')}) and the adapter lacks it`;
    errors.push({where: 'adapter', message: result.skipped});
    return result;
  }

  // Every binary file, fetched up front.
  const names = new Set();
  for (const b of trace.buffers) if (b.init) names.add(b.init);
  for (const c of trace.commands) if (c.op === 'write') names.add(c.data);
  for (const o of trace.outputs) names.add(o.expected);
  const files = new Map();
  await Promise.all([...names].map(async (name) => files.set(name, await fetchBytes(name))));

  const device = await getDevice(adapter, needsF16.length > 0, errors);
  const pending = [];
  const later = (promise, where) =>
    pending.push(promise.then((message) => message && errors.push({...where, message})));

  // Shaders and kernels.
  const modules = new Map();
  for (const shader of trace.shaders) {
    const module = await compileModule(device, shader, errors, false);
    if (module) modules.set(shader.name, module);
  }
  const kernels = new Map();
  for (const k of trace.kernels) {
    const module = modules.get(k.shader);
    if (!module) {
      errors.push({kernel: k.id, shader: k.shader, message: `kernel ${k.id}: shader ${k.shader} did not compile or is not in the trace`});
      continue;
    }
    const label = `kernel ${k.id} ${k.shader}.${k.entry}`;
    const layout = scoped(device, () => explicitLayout(device, label, k.uniform_size, k.bindings));
    later(layout.error, {kernel: k.id, shader: k.shader, entry: k.entry, where: 'layout'});
    const pipeline = scoped(device, () => device.createComputePipeline({
      label,
      layout: layout.value.pipelineLayout,
      compute: {module, entryPoint: k.entry},
    }));
    later(pipeline.error, {kernel: k.id, shader: k.shader, entry: k.entry, where: 'createComputePipeline'});
    kernels.set(k.id, {...k, pipeline: pipeline.value, bindGroupLayout: layout.value.bindGroupLayout});
  }

  // Buffers, with their usages plus COPY_SRC | COPY_DST, initialized through mappedAtCreation.
  const buffers = new Map();
  for (const b of trace.buffers) {
    let usage = GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    for (const u of b.usage) {
      if (!(u in USAGES)) throw new TraceError(`buffer ${b.id}: unknown usage ${u}`);
      usage |= USAGES[u];
    }
    const init = b.init ? files.get(b.init) : null;
    if (init && init.byteLength > b.size) {
      errors.push({buffer: b.id, label: b.label, message: `init ${b.init} has ${init.byteLength} bytes, the buffer ${b.size}`});
    }
    if (init && b.size % 4) {
      errors.push({buffer: b.id, label: b.label, message: `size ${b.size} is not a multiple of 4 and cannot be mapped at creation`});
    }
    const mapped = !!init && init.byteLength <= b.size && b.size % 4 === 0;
    const created = scoped(device, () => {
      const buffer = device.createBuffer({label: `buffer ${b.id} ${b.label}`, size: b.size, usage, mappedAtCreation: mapped});
      if (mapped) {
        new Uint8Array(buffer.getMappedRange()).set(init);
        buffer.unmap();
      }
      return buffer;
    });
    later(created.error, {buffer: b.id, label: b.label, where: 'createBuffer'});
    buffers.set(b.id, created.value);
  }
  const bufferOf = (id) => {
    const b = buffers.get(id);
    if (!b) throw new TraceError(`no buffer ${id} in the trace`);
    return b;
  };

  // Commands, in order. One command encoder holds the commands between writes; consecutive
  // dispatches share one compute pass; clears and copies go between passes. A "write" is a
  // queue operation, which runs before any command buffer submitted after it, so the encoder is
  // split there: what is recorded so far is submitted, the write is queued, and a new encoder
  // continues. Without writes the whole trace is one encoder and one submission.
  let encoder = null;
  let pass = null;
  let segment = null;
  const begin = (i) => {
    for (const filter of FILTERS) device.pushErrorScope(filter);
    segment = {first: i, last: i};
    encoder = device.createCommandEncoder({label: `cmd[${i}] onwards`});
  };
  const endPass = () => {
    if (pass) pass.end();
    pass = null;
  };
  const submit = () => {
    if (!encoder) return;
    endPass();
    device.queue.submit([encoder.finish({label: `commands ${segment.first}..${segment.last}`})]);
    const pops = FILTERS.map(() => device.popErrorScope()).reverse();
    const {first, last} = segment;
    pending.push(Promise.all(pops).then((errs) => {
      for (const e of errs) {
        if (!e) continue;
        const command = commandOf(e.message);
        if (command !== null) {
          const c = trace.commands[command];
          errors.push({command, op: c && c.op, label: c && c.label, message: e.message});
        } else {
          errors.push({commands: [first, last], where: 'encoder', message: e.message});
        }
      }
    }));
    encoder = null;
  };

  trace.commands.forEach((c, i) => {
    const where = {command: i, op: c.op, label: c.label};
    try {
      if (c.op === 'write') {
        submit();
        const data = files.get(c.data);
        const w = scoped(device, () => device.queue.writeBuffer(bufferOf(c.buffer), c.offset, data));
        later(w.error, where);
        return;
      }
      if (!encoder) begin(i);
      segment.last = i;
      if (c.op === 'dispatch') {
        const k = kernels.get(c.kernel);
        if (!k) throw new TraceError(`kernel ${c.kernel} is not in the trace or did not build`);
        if (c.uniform.size !== k.uniform_size) {
          throw new TraceError(`the uniform's size ${c.uniform.size} differs from kernel ${k.id}'s uniform_size ${k.uniform_size}`);
        }
        const entries = [{binding: 0, resource: {buffer: bufferOf(c.uniform.buffer), offset: 0, size: k.uniform_size}}];
        for (const b of c.bindings) {
          entries.push({binding: b.binding, resource: {buffer: bufferOf(b.buffer), offset: b.offset, size: b.size}});
        }
        const group = scoped(device, () =>
          device.createBindGroup({label: `cmd[${i}] ${c.label || ''}`, layout: k.bindGroupLayout, entries}));
        later(group.error, {...where, where: 'createBindGroup'});
        if (!pass) pass = encoder.beginComputePass({label: `cmd[${i}] pass`});
        pass.setPipeline(k.pipeline);
        pass.setBindGroup(0, group.value, [c.uniform.offset]);
        const [x, y = 1, z = 1] = c.workgroups;
        pass.dispatchWorkgroups(x, y, z);
        result.dispatches++;
      } else if (c.op === 'clear') {
        endPass();
        encoder.clearBuffer(bufferOf(c.buffer), c.offset ?? 0, c.size);
      } else if (c.op === 'copy') {
        endPass();
        encoder.copyBufferToBuffer(bufferOf(c.src), c.src_offset, bufferOf(c.dst), c.dst_offset, c.size);
      } else {
        throw new TraceError(`unknown op ${c.op}`);
      }
    } catch (e) {
      errors.push({...where, message: e instanceof TraceError ? `trace: ${e.message}` : `exception: ${text(e)}`});
    }
  });
  submit();

  // Read every output back through staging buffers (one encoder, one submission).
  const staging = [];
  const readback = scoped(device, () => {
    const enc = device.createCommandEncoder({label: 'readback'});
    for (const o of trace.outputs) {
      const s = device.createBuffer({
        label: `readback ${o.label}`,
        size: Math.ceil(o.size / 4) * 4,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      enc.copyBufferToBuffer(bufferOf(o.buffer), o.offset, s, 0, o.size);
      staging.push(s);
    }
    device.queue.submit([enc.finish()]);
  });
  later(readback.error, {where: 'readback'});
  const mapped = await Promise.all(staging.map((s) => s.mapAsync(GPUMapMode.READ).then(() => null, (e) => text(e))));
  await Promise.all(pending);

  trace.outputs.forEach((o, i) => {
    const base = {label: o.label, buffer: o.buffer, offset: o.offset, size: o.size, dtype: o.dtype};
    try {
      if (mapped[i] !== null || !staging[i]) throw new TraceError(`reading back: ${mapped[i]}`);
      const bytes = new Uint8Array(staging[i].getMappedRange().slice(0, o.size));
      const expectedBytes = files.get(o.expected);
      if (expectedBytes.byteLength !== o.size) {
        throw new TraceError(`${o.expected} has ${expectedBytes.byteLength} bytes, the output ${o.size}`);
      }
      if (typeof o.rtol !== 'number') throw new TraceError('no rtol');
      result.outputs.push({...base, ...compare(decode(bytes, o.dtype), decode(expectedBytes, o.dtype), o.rtol)});
    } catch (e) {
      result.outputs.push({...base, ok: false, error: e.message || String(e)});
    }
  });
  result.ok = errors.length === 0 && result.outputs.every((o) => o.ok);
  device.destroy();
  return result;
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const job = new URLSearchParams(location.search).get('job');
  let result;
  try {
    if (job === 'compile') result = await compileJob();
    else if (job === 'replay') result = await replayJob();
    else result = {ok: false, errors: [{where: 'page', message: `unknown job ${job}: runner.html?job=compile or ?job=replay`}]};
  } catch (e) {
    result = {ok: false, errors: [{where: 'runner', message: text(e)}]};
  }
  await report(result);
}

main();
