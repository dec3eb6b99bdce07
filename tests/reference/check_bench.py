"""pcmoe bench against the PyTorch reference model (tests only).

usage: check_bench.py PARTY_0.H5 TASK.jsonl BENCH.json

Reads the weights and the stored config of a one-party checkpoint with h5py, scores every (item, choice)
of the task with tests/reference/model.py in float64, written from bench.h's description (context = query,
continuation = " " + choice, the last seq_len + 1 bytes, log-likelihood of the continuation's bytes), and
compares with what `pcmoe bench --json` wrote: every log-likelihood to <= 1e-4 relative (fp32 against
float64 over up to seq_len bytes) and acc, acc_norm exactly (to the 9 digits the JSON keeps).
"""
import json
import sys

import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
import model as ref  # noqa: E402


def main():
    ckpt, task_path, bench_path = sys.argv[1:4]
    params, cfg = ref.load_checkpoint(ckpt)
    T = cfg.seq_len
    items = [json.loads(line) for line in open(task_path, encoding="utf-8") if line.strip()]
    got = json.load(open(bench_path))
    lls = got["loglik"]["0"]
    worst, right, right_norm = 0.0, 0, 0
    for item, c_ll in zip(items, lls):
        query = item["query"].encode("utf-8")
        mine = []
        for choice in item["choices"]:
            cont = b" " + choice.encode("utf-8")
            text = query + cont
            n = min(len(text) - 1, T)
            window = text[len(text) - 1 - n:]
            tokens = torch.tensor([list(window[:-1])])
            targets = torch.tensor([list(window[1:])])
            with torch.no_grad():
                logits = ref.forward(params, tokens, targets, cfg)[0]
            logp = torch.log_softmax(logits, -1)
            scored = min(len(cont), n)
            ll = sum(logp[pos, targets[0, pos]].item() for pos in range(n - scored, n))
            mine.append((ll, len(cont)))
        for (ll, _), c in zip(mine, c_ll):
            worst = max(worst, abs(ll - c) / max(1.0, abs(ll)))
        best = max(range(len(mine)), key=lambda j: (mine[j][0], -j))
        best_norm = max(range(len(mine)), key=lambda j: (mine[j][0] / mine[j][1], -j))
        right += best == item["gold"]
        right_norm += best_norm == item["gold"]
    acc, acc_norm = right / len(items), right_norm / len(items)
    p = got["parties"][0]
    print(f"{len(items)} items: worst relative log-likelihood difference {worst:.2e}; "
          f"acc {p['acc']:.4f} (reference {acc:.4f}), acc_norm {p['acc_norm']:.4f} (reference {acc_norm:.4f})")
    ok = worst <= 1e-4 and abs(p["acc"] - acc) < 1e-8 and abs(p["acc_norm"] - acc_norm) < 1e-8 and len(lls) == len(items)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
