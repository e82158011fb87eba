#!/usr/bin/env bash
# gpu-check.sh: one measured run of gradscope on a GPU machine, beside PyTorch, in one go.
#
#   scripts/gpu-check.sh --prepare   # here (network, Rust): build and pack what travels into .gpu/ and .gl/
#   scripts/gpu-check.sh             # there (no network, no Rust): info, GPU kernel tests, bench, PyTorch
#
# The run needs no build and no network: it uses the stripped, gzipped binaries in .gpu/ (made
# by --prepare: `gradscope` and the GPU kernel test binaries, about 33 MiB packed, so that what
# travels stays under 60 MiB; unpacked at the start of the run), unpacks the Vulkan loader from the
# Debian packages in .gl/ when the machine has no libvulkan.so.1 (NVIDIA's driver brings Vulkan
# but not the loader), then writes under $OUT (default ./gpu-check-out):
#   info.txt                      `gradscope info` (adapters, the kernel set chosen)
#   test-<name>.log               the kernel test binaries (every variant against the CPU reference)
#   bench.json, bench.log         `gradscope bench --json` (matmul GFLOP/s and % of FP32 peak, the
#                                 reference GPT and GPT-2 small's shape, per-kernel profiles)
#   torch-<config>-<mode>.json    ../shared/bench/torch_gpt.py on the same shapes, when python3
#                                 has PyTorch: fp32 with TF32 off (what WGSL computes) and
#                                 bf16 + SDPA (what a PyTorch user runs)
#   summary.txt                   the short table printed last
# Every stage has a time limit (the whole run is sized for a 15-minute slot on a datacenter GPU)
# and a failing stage does not stop the others; the exit status is that of the worst stage.
# On a machine without a GPU (lavapipe) it runs the same stages minus PyTorch when python3 has
# none; BENCH_ARGS adds flags to the bench (e.g. BENCH_ARGS="--sizes 256 --steps 2" there).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PACK=$ROOT/.gpu
LOADER=$ROOT/.gl
TORCH_SCRIPT=../shared/bench/torch_gpt.py
TESTS="kernels kernel_set kernels_gpu kernels_cnn"
# the reference GPT at B 16 x K 4, and GPT-2 small's shape at B 4 x K 2 (bench's --gpt2-small)
REF_ARGS="--n_layer 2 --n_head 4 --n_embd 128 --block_size 64 --vocab 65 --micro 16 --accum 4"
G2_ARGS="--n_layer 12 --n_head 12 --n_embd 768 --block_size 1024 --vocab 50257 --micro 4 --accum 2"

if [ "${1:-}" = "--prepare" ]; then
    set -e
    rm -rf "$PACK"
    mkdir -p "$PACK" "$LOADER"
    cargo build --release
    # stripped, then gzipped (the test binaries link the trainer: 8-15 MiB each stripped)
    pack() { strip -o "$PACK/$2" "$1" && gzip -9f "$PACK/$2"; }
    pack target/release/gradscope gradscope
    # `cargo test --no-run` prints each test binary's path ("Executable tests/kernels.rs (target/...)")
    for t in $TESTS; do
        exe=$(cargo test --release --no-run --test "$t" 2>&1 | sed -n "s|.*Executable tests/$t.rs (\(.*\))|\1|p" | tail -1)
        [ -n "$exe" ] || { echo "gpu-check: no test binary for tests/$t.rs" >&2; exit 1; }
        pack "$exe" "$t"
    done
    # the test binaries read assets/ relative to the repository root (it travels with the tree)
    cp "$TORCH_SCRIPT" "$PACK/torch_gpt.py" 2>/dev/null || echo "gpu-check: $TORCH_SCRIPT not found; PyTorch will be skipped there"
    # the Vulkan loader and GL libraries as Debian packages for amd64 (unpacked there when missing)
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    if ! ls "$LOADER"/libvulkan1_*.deb >/dev/null 2>&1; then
        mkdir -p /tmp/amd64/partial
        # shellcheck disable=SC2086
        apt-get $o update >/dev/null && (cd "$LOADER" && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2) \
            || echo "gpu-check: could not download the Vulkan loader packages into .gl/ (network?)"
    fi
    du -sh "$PACK" "$LOADER"
    echo "packed: .gpu/ and .gl/ (both git-ignored); run scripts/gpu-check.sh on the GPU machine"
    exit 0
fi

OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
# the packed binaries, unpacked outside the tree
BIN=$(mktemp -d "${TMPDIR:-/tmp}/gradscope-gpu-check.XXXXXX")
for f in "$PACK"/*.gz; do
    [ -f "$f" ] || continue
    gzip -dc "$f" > "$BIN/$(basename "$f" .gz)" && chmod +x "$BIN/$(basename "$f" .gz)"
done
GS=$BIN/gradscope
[ -x "$GS" ] || GS=$ROOT/target/release/gradscope
[ -x "$GS" ] || { echo "gpu-check: no gradscope binary (run scripts/gpu-check.sh --prepare first)" >&2; exit 2; }
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
chmod 700 "$XDG_RUNTIME_DIR" 2>/dev/null
status=0
note() { echo "gpu-check: $*" | tee -a "$OUT/summary.txt" >&2; }
: > "$OUT/summary.txt"
started=$(date +%s)

# 1. the Vulkan loader, when the system has none
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 '; then
    if ls "$LOADER"/*.deb >/dev/null 2>&1; then
        for f in "$LOADER"/*.deb; do dpkg -x "$f" /; done
        ldconfig
        note "unpacked the Vulkan loader from .gl/"
    else
        note "no libvulkan.so.1 and no .gl/*.deb to unpack: wgpu may find no Vulkan adapter"
    fi
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json

# 2. gradscope info (retried with NVIDIA's ICD named when wgpu finds no adapter)
if ! timeout 60 "$GS" info > "$OUT/info.txt" 2>&1; then
    if [ -f "$nvidia_icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
        export VK_DRIVER_FILES=$nvidia_icd
        note "no adapter at first; retrying with VK_DRIVER_FILES=$nvidia_icd"
        timeout 60 "$GS" info > "$OUT/info.txt" 2>&1 || status=1
    else
        status=1
    fi
fi
adapter=$(sed -n 's/^selected: //p' "$OUT/info.txt")
note "adapter: ${adapter:-none (see info.txt)}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>/dev/null

# 3. the GPU kernel tests (each binary runs from the repository root: tests read assets/)
for t in $TESTS; do
    bin=$BIN/$t
    if [ ! -x "$bin" ]; then
        note "test $t: no binary in .gpu/ (scripts/gpu-check.sh --prepare)"; status=1; continue
    fi
    if timeout 300 "$bin" --test-threads 1 > "$OUT/test-$t.log" 2>&1; then
        note "test $t: $(grep -E '^test result' "$OUT/test-$t.log" | tail -1)"
    else
        note "test $t: FAILED (see test-$t.log)"; status=1
    fi
done

# 4. the bench, one JSON document (GPU defaults: matmul 1024^3 and 4096^3, GPT-2 small at 4x2)
# shellcheck disable=SC2086
if timeout 420 "$GS" bench --json ${BENCH_ARGS:-} > "$OUT/bench.json" 2> "$OUT/bench.log"; then
    note "bench: bench.json"
else
    note "bench: FAILED (see bench.log)"; status=1
fi

# 5. PyTorch on the same shapes, when python3 has it
torch_py=$TORCH_SCRIPT
[ -f "$torch_py" ] || torch_py=$PACK/torch_gpt.py
if command -v python3 >/dev/null && python3 -c 'import torch' 2>/dev/null && [ -f "$torch_py" ]; then
    dev=$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
    threads=""
    [ "$dev" = cpu ] && threads="--threads $(nproc)"
    for cfg in reference gpt2-small; do
        args=$REF_ARGS
        [ "$cfg" = gpt2-small ] && args=$G2_ARGS
        # on a CPU the GPT-2 shape takes minutes a step: only the reference there
        [ "$dev" = cpu ] && [ "$cfg" = gpt2-small ] && continue
        for mode in fp32 bf16-sdpa; do
            extra="--precision fp32"
            [ "$mode" = bf16-sdpa ] && extra="--precision bf16 --sdpa"
            # shellcheck disable=SC2086
            if timeout 300 python3 "$torch_py" --device "$dev" $threads $args $extra > "$OUT/torch-$cfg-$mode.json" 2> "$OUT/torch-$cfg-$mode.log"; then
                note "pytorch $cfg $mode: torch-$cfg-$mode.json"
            else
                note "pytorch $cfg $mode: FAILED (see torch-$cfg-$mode.log)"; status=1
            fi
        done
    done
else
    note "pytorch: skipped (no python3 with torch, or no torch_gpt.py)"
fi

# 6. the short table
if command -v python3 >/dev/null; then
    python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.loads(f.read().strip().splitlines()[-1] if name.startswith("torch") else f.read())
    except (OSError, ValueError, IndexError):
        return None
b = load("bench.json")
if b is None:
    print("no bench.json"); sys.exit(0)
peak = b.get("fp32_peak")
tiles = f", matmul tiles {b['matmul_tiles']}" if b['kernels'] == 'gpu' else ''
print(f"\n{b['adapter']} ({b['kernels']} kernels{tiles}), FP32 peak: " + (f"{peak['tflops']} TFLOP/s" if peak else "unknown"))
print(f"{'matmul':<18}{'size':>7}{'GFLOP/s':>11}{'% of peak':>11}{'ms':>10}")
for m in b["matmul"]:
    pct = m.get("percent_of_peak")
    print(f"{m['variant'] + ('*' if m.get('selected') else ''):<18}{m['size']:>6}^3{m['gflops']:>11.1f}{(f'{pct:.1f}%' if pct is not None else '-'):>11}{m['ms_per_matmul']:>10.2f}")
rows = [("reference B16xK4", (b.get("gpt") or [None])[0], "reference"), ("gpt2-small", b.get("gpt2_small"), "gpt2-small")]
print(f"\n{'tokens/s':<20}{'gradscope':>11}{'torch fp32':>12}{'torch bf16+sdpa':>17}{'ratio fp32':>12}")
for label, g, cfg in rows:
    if g is None:
        continue
    if cfg == "gpt2-small":
        label = f"gpt2-small B{g['micro_batch']}xK{g['accum_steps']}"
    t32, tbf = load(f"torch-{cfg}-fp32.json"), load(f"torch-{cfg}-bf16-sdpa.json")
    f = lambda t: f"{t['tokens_per_s']:.0f}" if t else "-"
    ratio = f"{g['tokens_per_s'] / t32['tokens_per_s']:.2f}x" if t32 else "-"
    print(f"{label:<20}{g['tokens_per_s']:>11.0f}{f(t32):>12}{f(tbf):>17}{ratio:>12}")
    if g.get("kernels"):
        top = ", ".join(f"{n} {100 * s / sum(x[1] for x in g['kernels']):.0f}%" for n, s in g["kernels"][:4])
        print(f"  largest kernels: {top}")
PY
else
    grep -h "" "$OUT/summary.txt"
fi
note "done in $(( $(date +%s) - started )) s; everything is in $OUT (exit status $status)"
exit $status
