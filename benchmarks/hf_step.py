"""transformers' own side of benchmarks/large_vocab.sh.

  hf_step.py make DIR VOCAB        a random MoE checkpoint made by transformers (save_pretrained, F32): Mixtral's
                                   architecture at VOCAB 32000, Qwen3-MoE's otherwise; small dense dims, so that the
                                   LM head and the cross-entropy weigh as they do in the real models
  hf_step.py time DIR THREADS STEPS B T
                                   transformers' eager training step of DIR's model (forward with labels, backward,
                                   AdamW) in fp32 on THREADS threads; prints tokens/s (median of STEPS after one
                                   warm-up step) and the process's peak RSS in bytes
Nothing is downloaded.
"""
import resource
import statistics
import sys
import time

import torch
import transformers

DIMS = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
            max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False, num_experts_per_tok=2,
            attn_implementation="eager")


def make(d, vocab):
    vocab = int(vocab)
    if vocab == 32000:
        cfg = transformers.MixtralConfig(vocab_size=vocab, **DIMS, intermediate_size=512, num_local_experts=8,
                                         rope_theta=1e6, sliding_window=None)
    else:
        cfg = transformers.Qwen3MoeConfig(vocab_size=vocab, **DIMS, intermediate_size=512, moe_intermediate_size=512,
                                          num_experts=8, rope_theta=1e6, norm_topk_prob=True, decoder_sparse_step=1)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(d, safe_serialization=True)


def time_step(d, threads, steps, B, T):
    torch.set_num_threads(int(threads))
    steps, B, T = int(steps), int(B), int(T)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                              attn_implementation="eager")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (B, T + 1), generator=g)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids[:, :-1], labels=ids[:, :-1])  # (labels shift inside: T-1 predictions a row)
        out.loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(B * T / statistics.median(times), rss)


if __name__ == "__main__":
    {"make": make, "time": time_step}[sys.argv[1]](*sys.argv[2:])
