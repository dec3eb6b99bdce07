"""Times one training step (forward, backward, clip, AdamW) of the PyTorch reference model
(tests/reference/model.py) in float32, eager mode, for a pcmoe config file, on the CPU or a GPU.

usage: torch_step.py CONFIG.ini THREADS STEPS [DEVICE [MATH]]
  -> prints tokens/s (median over STEPS after 3 warm-up steps); DEVICE: cpu (default) or cuda;
     MATH: fp32 (default: TF32 off, as pcmoe's run.tf32 = false) or tf32 (PyTorch's matmuls on TF32 tensor
     cores, as pcmoe's run.tf32 = true)
"""
import configparser
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
import model as ref  # noqa: E402


def main():
    path, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dev = torch.device(sys.argv[4] if len(sys.argv) > 4 else "cpu")
    math_mode = sys.argv[5] if len(sys.argv) > 5 else "fp32"
    if math_mode not in ("fp32", "tf32"):
        sys.exit(f"torch_step.py: MATH = {math_mode}: must be fp32 or tf32")
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("high" if math_mode == "tf32" else "highest")  # (high: TF32 allowed)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ini = configparser.ConfigParser()
    ini.read(path)
    mdl, tr = ini["model"], ini["train"]
    g = lambda s, k, d: s.get(k, d)  # noqa: E731
    cfg = ref.Config(int(g(mdl, "vocab_size", 256)), int(g(mdl, "d_model", 128)), int(g(mdl, "n_layers", 4)),
                     int(g(mdl, "n_heads", 4)), int(g(mdl, "seq_len", 128)), int(g(mdl, "d_ff", 512)),
                     int(g(mdl, "n_experts", 8)), int(g(mdl, "top_k", 2)), int(g(mdl, "expert_ff", 256)),
                     int(g(mdl, "moe_every", 1)), float(g(mdl, "aux_loss_coef", 0.01)),
                     float(g(mdl, "z_loss_coef", 0.001)), float(g(mdl, "rope_theta", 10000)), 1e-5)
    B, T, d = int(g(tr, "batch_size", 16)), cfg.seq_len, cfg.d
    torch.manual_seed(0)
    shapes = {"embed": (cfg.vocab, d), "final_norm": (d,), "lm_head": (cfg.vocab, d)}
    for l in range(cfg.n_layers):
        shapes.update({f"layer_{l}/attn_norm": (d,), f"layer_{l}/attn_wqkv": (3 * d, d),
                       f"layer_{l}/attn_wo": (d, d), f"layer_{l}/ffn_norm": (d,)})
        if cfg.is_moe(l):
            shapes[f"layer_{l}/router"] = (cfg.n_experts, d)
            for e in range(cfg.n_experts):
                shapes.update({f"layer_{l}/expert_{e}/w_gate": (cfg.expert_ff, d),
                               f"layer_{l}/expert_{e}/w_up": (cfg.expert_ff, d),
                               f"layer_{l}/expert_{e}/w_down": (d, cfg.expert_ff)})
        else:
            shapes.update({f"layer_{l}/ffn_gate": (cfg.d_ff, d), f"layer_{l}/ffn_up": (cfg.d_ff, d),
                           f"layer_{l}/ffn_down": (d, cfg.d_ff)})
    p = {n: (torch.ones(s) if len(s) == 1 else 0.02 * torch.randn(s)).to(dev).requires_grad_(True)
         for n, s in shapes.items()}
    decay = [t for t in p.values() if t.dim() == 2]
    no_decay = [t for t in p.values() if t.dim() == 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    times = []
    for s in range(steps + 3):
        tok = torch.randint(0, 256, (B, T), device=dev)
        tgt = torch.randint(0, 256, (B, T), device=dev)
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, loss, *_ = ref.forward(p, tok, tgt, cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        sync()
        if s >= 3:
            times.append(time.perf_counter() - t0)
    print(f"{B * T / statistics.median(times):.1f}")


if __name__ == "__main__":
    main()
