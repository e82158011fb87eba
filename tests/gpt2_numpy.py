"""A GPT-2 forward pass in numpy (float64) on a Hugging Face GPT-2 folder, as transformers'
GPT2LMHeadModel computes it: Conv1D weights [in, out], gelu_new (the tanh GELU), pre-LN blocks,
LayerNorm eps from config.json, lm_head tied to wte.

usage: python3 gpt2_numpy.py FOLDER IDS.json OUT.f32
IDS.json holds [[token, ...], ...] (B sequences of T tokens); OUT.f32 receives the logits
[B, T, V] as little-endian float32.
"""
import json
import sys

import numpy as np
from safetensors.numpy import load_file


def layer_norm(x, g, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def main():
    folder, ids_path, out_path = sys.argv[1:4]
    with open(f"{folder}/config.json") as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["GPT2LMHeadModel"], cfg
    assert cfg["activation_function"] == "gelu_new", cfg
    w = {}
    for k, v in load_file(f"{folder}/model.safetensors").items():
        w[k[len("transformer."):] if k.startswith("transformer.") else k] = v.astype(np.float64)
    with open(ids_path) as f:
        ids = np.array(json.load(f), dtype=np.int64)
    B, T = ids.shape
    C, H, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    hs = C // H
    assert T <= cfg["n_positions"]
    x = w["wte.weight"][ids] + w["wpe.weight"][:T]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = np.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(B, T, H, hs).transpose(0, 2, 1, 3) for t in (q, k, v))
        att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)
        att = np.where(causal, att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        h = gelu_new(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    logits = x @ w["wte.weight"].T
    logits.astype("<f4").tofile(out_path)


if __name__ == "__main__":
    main()
