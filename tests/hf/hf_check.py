"""Tiny Hugging Face MoE checkpoints made by transformers itself, and pcmoe held against them.

  hf_check.py make OUT            three random checkpoints with transformers' config classes and
                                  save_pretrained: OUT/mixtral (sharded, F32), OUT/olmoe (F32), OUT/qwen3 (BF16),
                                  each with the tokenizer of its family (see tokenizers), ids.txt (B lines of
                                  T+1 ids) and pcmoe.ini (model.hf = that dir); and OUT/big (expert-heavy)
  hf_check.py check DIR DUMP      transformers' fp32 logits, loss and gradients on DIR/ids.txt against hf_dump's
                                  DUMP: logits within 1e-4 of the largest |logit|, the loss within 1e-5, every
                                  gradient within 1e-4 of its norm
  hf_check.py corrupt DIR OUT      copies of checkpoint DIR (one F32 file) broken one way each, as OUT/<case>
                                  (header, offsets, sizes, overlaps, a missing tensor, a wrong shape, a dtype,
                                  config.json's features and syntax); prints "<case> <what the error names>"
  hf_check.py tokenizers OUT       five tokenizers trained by the tokenizers library on shipped corpora:
                                  OUT/olmoe.json (byte-level BPE, GPT-2's regex), OUT/qwen3.json (Qwen's Split
                                  regex), OUT/mixtral.json (SentencePiece-style with byte fallback), OUT/mistral.json
                                  and OUT/metaspace.json (Metaspace pre-tokenizers, "first" unsplit and "always"
                                  split); OUT/stress.txt
  hf_check.py encode TOK TEXT OUT / decode TOK IDS OUT
                                  the tokenizers library's ids of TEXT (no special tokens added), or text of IDS
  hf_check.py same A B bits|differ transformers loads both: B's tensors are A's bit for bit and give the same
                                  logits (bits), or B is a fine-tune of A with finite logits (differ)
  hf_check.py bench DIR TASK JSON  pcmoe bench --json's log-likelihoods against transformers' (within 1e-3)
  hf_check.py generate DIR PROMPT JSON
                                  transformers' greedy continuation of PROMPT (DIR/tokenizer.json's ids) against pcmoe
                                  generate --temperature 0's JSON: the same tokens, log-probabilities within 1e-4
Nothing is downloaded: the models are random and made here.
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file

SEQ, BATCH = 24, 2


def tiny_configs():
    common = dict(vocab_size=1024, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False, num_experts_per_tok=2,
                  attn_implementation="eager")
    return {
        # Mixtral: every layer MoE, softmax then top-2 renormalised; sharded on save
        "mixtral": transformers.MixtralConfig(**common, intermediate_size=40, num_local_experts=4, rope_theta=1e6,
                                              sliding_window=None, eos_token_id=2),
        # OLMoE: QK-norm over the whole projections, gates without renormalisation
        "olmoe": transformers.OlmoeConfig(**common, intermediate_size=24, num_experts=6, rope_theta=10000.0,
                                          norm_topk_prob=False, eos_token_id=0, pad_token_id=1),
        # Qwen3-MoE: per-head QK-norm, heads of 12 (wider than 32 / 4), layer 0 dense; saved in BF16
        "qwen3": transformers.Qwen3MoeConfig(**common, intermediate_size=48, moe_intermediate_size=20, num_experts=4,
                                             head_dim=12, rope_theta=1e6, norm_topk_prob=True, mlp_only_layers=[0],
                                             decoder_sparse_step=1, eos_token_id=0),
    }


def make(out):
    import shutil
    tokenizers_make(os.path.join(out, "tok"))
    for name, cfg in tiny_configs().items():
        torch.manual_seed(1000 + len(name))
        model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
        with torch.no_grad():  # norm weights away from 1, so that a missed or misplaced norm shows
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(0.2 * torch.randn_like(p))
        d = os.path.join(out, name)
        if name == "qwen3":
            model = model.to(torch.bfloat16)
        model.save_pretrained(d, safe_serialization=True, max_shard_size="80KB" if name == "mixtral" else "5GB")
        shutil.copy(os.path.join(out, "tok", name + ".json"), os.path.join(d, "tokenizer.json"))
        g = torch.Generator().manual_seed(7)
        ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ + 1), generator=g)
        with open(os.path.join(d, "ids.txt"), "w") as f:
            for row in ids.tolist():
                f.write(" ".join(map(str, row)) + "\n")
        with open(os.path.join(d, "pcmoe.ini"), "w") as f:
            f.write(f"[model]\nhf = {d}\nseq_len = {SEQ}\naux_loss_coef = 0\n\n[data]\n0 = {d}/ids.txt\n")
    # expert-heavy (32 experts of 0.75 MiB per layer: 48 MiB of pool): what a party reads is seen in its memory
    big = transformers.OlmoeConfig(vocab_size=384, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=1024, num_experts=32, num_experts_per_tok=2,
                                   max_position_embeddings=128)
    transformers.AutoModelForCausalLM.from_config(big).save_pretrained(os.path.join(out, "big"))
    print(f"made mixtral, olmoe, qwen3 and big under {out} with transformers {transformers.__version__}")


def load(d):
    model = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32,
                                                              attn_implementation="eager")
    model.eval()
    # Each tensor into memory of torch's own allocator: tensors mapped from a file sit at the file's offsets,
    # and an unaligned tensor can take another vector path (logits 1e-7 apart for bit-identical weights).
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model


def check(d, dump):
    model = load(d)
    rows = [list(map(int, line.split())) for line in open(os.path.join(d, "ids.txt"))]
    ids = torch.tensor(rows)
    inp, tgt = ids[:, :-1], ids[:, 1:]
    logits = model(input_ids=inp).logits
    V = logits.shape[-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
    loss.backward()
    got = load_file(dump)
    errors = []
    scale = logits.abs().max().item()
    lerr = (got["logits"] - logits.detach().reshape(-1, V)).abs().max().item() / scale
    if not lerr <= 1e-4:
        errors.append(f"logits: max difference {lerr:.2e} of the largest |logit|")
    dl = abs(got["loss"].item() - loss.item())
    if not dl <= 1e-5:
        errors.append(f"loss {got['loss'].item():.7f} vs {loss.item():.7f}")
    worst, n, params = 0.0, 0, dict(model.named_parameters())
    for name, p in params.items():
        key = "grad." + name
        if key not in got:
            if name == "lm_head.weight" and model.config.tie_word_embeddings:
                continue
            errors.append(f"{name}: no gradient from pcmoe")
            continue
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        e = (got[key] - ref).norm().item() / max(ref.norm().item(), 1e-12)
        n += 1
        worst = max(worst, e)
        if not e <= 1e-4:
            errors.append(f"{name}: gradient differs by {e:.2e} of its norm")
    arch = model.config.architectures[0]
    if errors:
        sys.exit(f"FAIL {arch}: " + "; ".join(errors[:6]))
    print(f"{arch}: logits within {lerr:.1e} of max |logit| {scale:.3f}, loss {loss.item():.6f} (diff {dl:.1e}), "
          f"{n} gradients within {worst:.1e} of their norms")


def generate(d, prompt, out):
    from tokenizers import Tokenizer
    model = load(d)
    text = open(prompt, encoding="utf-8").read()
    ids = torch.tensor([Tokenizer.from_file(os.path.join(d, "tokenizer.json")).encode(text, add_special_tokens=False).ids])
    got = json.load(open(out))
    n = got["max_new"]
    with torch.no_grad():
        res = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    want = res.sequences[0, ids.shape[1]:].tolist()
    logp = [torch.log_softmax(s[0].double(), -1)[t].item() for s, t in zip(res.scores, want)]
    diff = max(abs(a - b) for a, b in zip(got["logprobs"], logp))
    arch = model.config.architectures[0]
    if got["tokens"] != want or not diff <= 1e-4:
        sys.exit(f"FAIL {arch}: pcmoe {got['tokens'][:12]}..., transformers {want[:12]}...; log-probabilities "
                 f"within {diff:.1e}")
    print(f"{arch}: {n} greedy tokens identical to transformers' generate, log-probabilities within {diff:.1e}")


QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
              r"""\s+(?!\S)|\s+""")
STRESS = ("CJK 日本語の文章と中文，한국어 텍스트. Emoji 👍🏽 👩‍👩‍👧 🇯🇵 ❤️; combining: cafe\u0301 nai\u0308ve "
          "A\u030a; precomposed: café naïve Å.\r\nCRLF line\r\n\ttabs\t\tand   runs of     spaces  \n"
          "digits 0123456789 3.14159 1,000,000 ２０２６; ligature ﬁ; Greek Ωμέγα; math ∑∫√; quotes “’”; "
          "<|endoftext|> and <s> and </s> in text; trailing spaces   \n\n\n")


def tokenizers_make(out):
    """Five tokenizers trained with the tokenizers library on shipped corpora: one of each family, and both
    Metaspace pre-tokenizers."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "input", "data")
    files = [os.path.join(data, f) for f in ("shakespeare.txt", "sqlite3_h.txt", "grimm.txt")]

    def byte_level(split):
        t = Tokenizer(models.BPE())
        t.normalizer = normalizers.NFC()
        if split:  # Qwen: its Split regex, then the byte mapping
            t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:  # GPT-2 / OLMoE: ByteLevel's own regex
            t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        t.decoder = decoders.ByteLevel()
        special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if split else ["<|endoftext|>", "<|padding|>"]
        t.train(files, trainers.BpeTrainer(vocab_size=800, special_tokens=special, show_progress=False,
                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        return t

    def sentencepiece():  # Llama / Mixtral: "▁" for spaces, byte fallback for what the vocabulary lacks
        t = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
        t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        # trained on words that begin at "▁", as SentencePiece's own trainer does, then saved without a
        # pre-tokenizer, as transformers converts Llama's and Mixtral's tokenizers
        t.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
        t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                       decoders.Strip(" ", 1, 0)])
        t.train(files, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=150,
                                           show_progress=False))
        j = json.loads(t.to_str())
        j["pre_tokenizer"] = None
        v = j["model"]["vocab"]
        n = max(v.values()) + 1
        for b in range(256):
            v[f"<0x{b:02X}>"] = n + b
        # the merges as ["a", "b"] pairs here, "a b" strings in the byte-level ones: both formats are read
        j["model"]["merges"] = [m.split(" ", 1) if isinstance(m, str) else m for m in j["model"]["merges"]]
        return Tokenizer.from_str(json.dumps(j))

    def metaspace(split):
        # split = False: SentencePiece tokenizers as newer transformers convert them (Mistral, Llama 2): no
        # normalizer, a Metaspace pre-tokenizer that puts "▁" only at the text's start ("first"), the Replace
        # decoders. split = True: tokenizers' own Metaspace pair ("always", a piece per "▁", its decoder).
        scheme = "always" if split else "first"
        t = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
        t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
        if split:
            t.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme=scheme)])
        else:
            t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
        t.train(files, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=150,
                                           show_progress=False))
        j = json.loads(t.to_str())
        j["pre_tokenizer"]["split"] = split
        v = j["model"]["vocab"]
        n = max(v.values()) + 1
        for b in range(256):
            v[f"<0x{b:02X}>"] = n + b
        return Tokenizer.from_str(json.dumps(j))

    os.makedirs(out, exist_ok=True)
    for name, t in (("olmoe", byte_level(False)), ("qwen3", byte_level(True)), ("mixtral", sentencepiece()),
                    ("mistral", metaspace(False)), ("metaspace", metaspace(True))):
        t.save(os.path.join(out, name + ".json"))
        j = json.load(open(os.path.join(out, name + ".json")))
        if name in ("olmoe", "qwen3"):  # "a b" strings
            j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
            json.dump(j, open(os.path.join(out, name + ".json"), "w"), ensure_ascii=False)
    open(os.path.join(out, "stress.txt"), "w", encoding="utf-8", newline="").write(STRESS)
    print(f"trained olmoe, qwen3, mixtral, mistral and metaspace-style tokenizers under {out} with tokenizers "
          f"{__import__('tokenizers').__version__}")


def encode(tok, text, out):
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(tok)
    ids = t.encode(open(text, encoding="utf-8", newline="").read(), add_special_tokens=False).ids
    open(out, "w").write(" ".join(map(str, ids)) + "\n")


def decode(tok, ids, out):
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(tok)
    open(out, "w", encoding="utf-8", newline="").write(t.decode(list(map(int, open(ids).read().split())),
                                                               skip_special_tokens=False))


def bench(d, task, out):
    """pcmoe bench's log-likelihoods against transformers': each choice's continuation tokens as
    lm-evaluation-harness takes them (what encoding query + " " + choice adds to the query's ids)."""
    from tokenizers import Tokenizer
    model, tok = load(d), Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    got = json.load(open(out))["loglik"]["0"]
    worst, n = 0.0, 0
    for item, row in zip(map(json.loads, open(task)), got):
        for choice, ll in zip(item["choices"], row):
            ctx = tok.encode(item["query"], add_special_tokens=False).ids
            whole = tok.encode(item["query"] + " " + choice, add_special_tokens=False).ids
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([whole[:-1]])).logits[0].double(), -1)
            want = sum(logp[p - 1, whole[p]].item() for p in range(max(len(ctx), 1), len(whole)))
            worst, n = max(worst, abs(want - ll)), n + 1
    arch = model.config.architectures[0]
    if not worst <= 1e-3:
        sys.exit(f"FAIL {arch}: bench log-likelihoods differ from transformers' by up to {worst:.2e}")
    print(f"{arch}: bench's {n} log-likelihoods within {worst:.1e} of transformers' (lm-evaluation-harness's split)")


def same(a, b, mode):
    """transformers loads both checkpoints; mode "bits": every tensor of b equals a's (as fp32) bit for bit;
    mode "differ": b's weights differ from a's (a fine-tune) and b's logits are finite."""
    ma, mb = load(a), load(b)
    pa, pb = dict(ma.named_parameters()), dict(mb.named_parameters())
    if set(pa) != set(pb):
        sys.exit(f"FAIL: tensors differ: {sorted(set(pa) ^ set(pb))[:4]}")
    equal = sum(torch.equal(pa[k], pb[k]) for k in pa)
    ids = torch.tensor([list(range(1, 25))])
    with torch.no_grad():
        la, lb = ma(input_ids=ids).logits, mb(input_ids=ids).logits
    diff = (la - lb).abs().max().item()
    arch = mb.config.architectures[0]
    if mode == "bits" and (equal != len(pa) or diff != 0.0):
        sys.exit(f"FAIL {arch}: {len(pa) - equal} of {len(pa)} tensors changed, logits differ by {diff:.2e}")
    if mode == "differ" and (equal == len(pa) or not torch.isfinite(lb).all()):
        sys.exit(f"FAIL {arch}: the export's weights are the original's, or its logits are not finite")
    what = "every tensor bit-identical, the same logits" if mode == "bits" else \
        f"{len(pa) - equal} of {len(pa)} tensors fine-tuned, finite logits"
    print(f"{arch}: transformers loads the export ({len(pa)} tensors): {what}")


def read_st(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data, length=None):
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write((len(h) if length is None else length).to_bytes(8, "little") + h + data)


def corrupt(d, out):
    import shutil
    header, data = read_st(os.path.join(d, "model.safetensors"))
    names = sorted(k for k in header if k != "__metadata__")
    q, k = "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"
    cases = {}

    def case(name, want, mutate=None, config=None, length=None):
        c = os.path.join(out, name)
        shutil.copytree(d, c)
        h = json.loads(json.dumps(header))
        if mutate:
            mutate(h)
        write_st(os.path.join(c, "model.safetensors"), h, data, length)
        if config is not None:
            cfg = json.load(open(os.path.join(c, "config.json")))
            if callable(config):
                config(cfg)
                json.dump(cfg, open(os.path.join(c, "config.json"), "w"))
            else:
                open(os.path.join(c, "config.json"), "w").write(config)
        cases[name] = want

    case("header_length", "header length", length=10 ** 9)
    case("offsets", "data_offsets outside", lambda h: h[q].update(data_offsets=[h[q]["data_offsets"][0], len(data) + 4]))
    case("size", f"tensor {q}: ", lambda h: h[q].update(shape=[h[q]["shape"][0], h[q]["shape"][1] - 1]))
    case("overlap", "overlap", lambda h: h[k].update(data_offsets=[h[q]["data_offsets"][0],
                                                                     h[q]["data_offsets"][0] + h[k]["data_offsets"][1] - h[k]["data_offsets"][0]]))
    case("missing", f"tensor {k} (pcmoe layer_1/attn_wqkv) is missing", lambda h: h.pop(k))
    case("shape", f"tensor {q} has shape (16, 64)", lambda h: h[q].update(shape=[16, 64]))
    case("dtype", f"tensor {q}: dtype I32", lambda h: h[q].update(dtype="I32"))
    case("not_json", "header is not JSON", lambda h: h.update({"\u0000": None}) or h.clear() or None, length=None)
    case("arch", "architectures = Qwen2MoeForCausalLM", config=lambda c: c.update(architectures=["Qwen2MoeForCausalLM"]))
    case("rope_scaling", "rope_scaling = {\"factor\":2.0,\"rope_type\":\"linear\"}: rope scaling is not supported",
         config=lambda c: c.update(rope_scaling={"factor": 2.0, "rope_type": "linear"}))
    case("bias", "attention_bias = true: a bias in attention is not supported", config=lambda c: c.update(attention_bias=True))
    case("config_syntax", "config.json: not JSON", config='{"architectures": ["OlmoeForCausalLM"],')
    case("no_hidden", "hidden_size: missing", config=lambda c: c.pop("hidden_size"))
    # the not-JSON header: bytes that are not JSON at all
    raw = open(os.path.join(out, "not_json", "model.safetensors"), "rb").read()
    with open(os.path.join(out, "not_json", "model.safetensors"), "wb") as f:
        f.write((12).to_bytes(8, "little") + b'{"a": [1, 2' + b" " + data)
    for name, want in cases.items():
        print(name, want)


if __name__ == "__main__":
    {"make": make, "check": check, "generate": generate, "corrupt": corrupt, "tokenizers": tokenizers_make,
     "encode": encode, "decode": decode, "bench": bench, "same": same}[sys.argv[1]](*sys.argv[2:])
