"""Independent PyTorch reference of the pcmoe model (tests only).

Written from the architecture description, not from the C code: autograd provides every gradient and
torch.optim.AdamW the optimizer, so agreement with the C engine checks its hand-written backward pass
and update. Runs in float64 so that the comparison measures the C engine's fp32 error.

Architecture (byte-level decoder-only transformer, no biases):
  x = embed[tokens]
  per layer l:  x = x + Attn(RMSNorm(x))      causal multi-head attention, RoPE (rotate-half) on q, k
                x = x + FFN(RMSNorm(x))       MoE when l >= private_layers and (l + 1) % moe_every == 0, else dense
  logits = RMSNorm(x) @ lm_head^T
  loss = CE + aux_coef * sum(aux) + z_coef * sum(z)
MoE: probs = softmax(x @ router^T); top-k experts; gates = chosen probs / their sum;
     y = sum_j gates_j * expert_j(x);  expert(x) = (silu(x wg^T) * (x wu^T)) wd^T
     aux = m * sum_e frac_e * mean_prob_e  (frac_e = share of the N*k choices routed to e, no gradient)
     z = mean over tokens of logsumexp(router logits)^2
"""
import math

import torch
import torch.nn.functional as F


class Config:
    def __init__(self, vocab, d, n_layers, n_heads, seq_len, d_ff, n_experts, top_k, expert_ff, moe_every,
                 aux_coef, z_coef, rope_theta, norm_eps):
        self.vocab, self.d, self.n_layers, self.n_heads = vocab, d, n_layers, n_heads
        self.seq_len, self.d_ff, self.n_experts, self.top_k = seq_len, d_ff, n_experts, top_k
        self.expert_ff, self.moe_every = expert_ff, moe_every
        self.private_layers = 0  # the first private_layers layers are dense (model.private_layers)
        self.aux_coef, self.z_coef, self.rope_theta, self.norm_eps = aux_coef, z_coef, rope_theta, norm_eps

    def is_moe(self, layer):
        return layer >= self.private_layers and (layer + 1) % self.moe_every == 0


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    """x: (B, H, T, hs). Rotates pairs (i, i + hs/2) by angle t * theta^(-2i/hs)."""
    T, hs = x.shape[-2], x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, hs // 2, dtype=torch.float64, device=x.device) * 2.0 / hs)
    ang = torch.arange(T, dtype=torch.float64, device=x.device)[:, None] * inv_freq[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2:]
    rotated = torch.cat([-x2, x1], -1)
    return x * cos + rotated * sin


def attention(x, wqkv, wo, cfg):
    B, T, d = x.shape
    H, hs = cfg.n_heads, d // cfg.n_heads
    q, k, v = (x @ wqkv.T).split(d, dim=-1)
    q, k, v = (t.view(B, T, H, hs).transpose(1, 2) for t in (q, k, v))
    q, k = rope(q, cfg.rope_theta), rope(k, cfg.rope_theta)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
    mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    att = scores.masked_fill(mask, float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, d)
    return y @ wo.T


def swiglu(x, wg, wu, wd):
    return (F.silu(x @ wg.T) * (x @ wu.T)) @ wd.T


def moe(x, p, layer, cfg):
    """x: (N, d). Returns (y, aux, z)."""
    N = x.shape[0]
    m, k = cfg.n_experts, cfg.top_k
    logits = x @ p[f"layer_{layer}/router"].T
    probs = logits.softmax(-1)
    top_p, top_i = probs.topk(k, dim=-1)
    gates = top_p / top_p.sum(-1, keepdim=True)
    y = torch.zeros_like(x)
    for e in range(m):
        rows, slot = (top_i == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        out = swiglu(x[rows], p[f"layer_{layer}/expert_{e}/w_gate"], p[f"layer_{layer}/expert_{e}/w_up"],
                     p[f"layer_{layer}/expert_{e}/w_down"])
        y = y.index_add(0, rows, gates[rows, slot][:, None] * out)
    with torch.no_grad():
        frac = torch.bincount(top_i.flatten(), minlength=m).to(x.dtype) / (N * k)
    aux = m * (frac * probs.mean(0)).sum()
    z = torch.logsumexp(logits, -1).pow(2).mean()
    return y, aux, z


def forward(p, tokens, targets, cfg):
    """p: dict name -> tensor (C engine names). Returns (logits, loss, ce, aux, z)."""
    B, T = tokens.shape
    x = p["embed"][tokens.long()]
    aux_total = x.new_zeros(())
    z_total = x.new_zeros(())
    for l in range(cfg.n_layers):
        x = x + attention(rms_norm(x, p[f"layer_{l}/attn_norm"], cfg.norm_eps), p[f"layer_{l}/attn_wqkv"],
                          p[f"layer_{l}/attn_wo"], cfg)
        h = rms_norm(x, p[f"layer_{l}/ffn_norm"], cfg.norm_eps)
        if cfg.is_moe(l):
            y, aux, z = moe(h.reshape(B * T, -1), p, l, cfg)
            x = x + y.view(B, T, -1)
            aux_total = aux_total + aux
            z_total = z_total + z
        else:
            x = x + swiglu(h, p[f"layer_{l}/ffn_gate"], p[f"layer_{l}/ffn_up"], p[f"layer_{l}/ffn_down"])
    logits = rms_norm(x, p["final_norm"], cfg.norm_eps) @ p["lm_head"].T
    ce = F.cross_entropy(logits.view(B * T, -1), targets.long().view(-1))
    loss = ce + cfg.aux_coef * aux_total + cfg.z_coef * z_total
    return logits.view(B * T, -1), loss, ce, aux_total, z_total


def lr_at(step, lr, min_lr, warmup, total):
    """Linear warmup to lr over `warmup` steps (step is 0-based), then cosine down to min_lr at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup)) if total > warmup else 1.0
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def load_checkpoint(path):
    """The weights (float64, C engine names) and the model Config of a one-party checkpoint file, with h5py
    (imported here: the rest of this module needs only torch)."""
    import configparser

    import h5py
    import numpy as np
    params = {}
    with h5py.File(path, "r") as f:
        text = f["meta"].attrs["config"]
        text = text.decode() if isinstance(text, bytes) else str(text)
        for group in ("backbone", "experts"):
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    params[name] = torch.tensor(np.array(obj, dtype=np.float64)).squeeze(-1)
            f[group].visititems(visit)
    ini = configparser.ConfigParser()
    ini.read_string(text)
    mk = ini["model"]
    cfg = Config(256, int(mk["d_model"]), int(mk["n_layers"]), int(mk["n_heads"]), int(mk["seq_len"]),
                 int(mk["d_ff"]), int(mk["n_experts"]), int(mk["top_k"]), int(mk["expert_ff"]),
                 int(mk["moe_every"]), float(mk["aux_loss_coef"]), float(mk["z_loss_coef"]),
                 float(mk["rope_theta"]), float(mk["norm_eps"]))
    cfg.private_layers = int(mk.get("private_layers", "0"))
    return params, cfg
