#!/bin/sh
# test_fuzz: a short, bounded libFuzzer run of the INI parser (tests/fuzz/fuzz_config.c), the
# checkpoint loader (tests/fuzz/fuzz_ckpt.c), the safetensors reader (tests/fuzz/fuzz_safetensors.c) and
# the Hugging Face config.json reader (tests/fuzz/fuzz_hfconfig.c) and the tokenizer.json reader
# (tests/fuzz/fuzz_tokenizer.c, then encoding and decoding with what it accepts), built with clang under ASan and UBSan,
# seeded with the shipped configs, a real checkpoint, and a safetensors file and config.json of each
# supported architecture, and a small byte-level and a SentencePiece-style tokenizer.json. Any crash, leak, or sanitizer report fails it. Fixed seeds and
# run counts keep it repeatable. Longer runs: FUZZ_RUNS=1000000 sh tests/test_fuzz.sh
# Skips (77) without clang + libFuzzer, unless PCMOE_REQUIRE_TORCH=1 (scripts/check.sh installs them).
. "$(dirname "$0")/lib.sh"

CLANG=${CLANG:-clang}
runs=${FUZZ_RUNS:-4000}
if ! command -v "$CLANG" >/dev/null 2>&1 || ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' |
        "$CLANG" -x c -fsanitize=fuzzer - -o "$TMP/probe" >/dev/null 2>&1; then
    [ "${PCMOE_REQUIRE_TORCH:-0}" = 1 ] && { fail "no clang with libFuzzer (apt-get install clang libclang-rt-14-dev)"; finish; }
    echo "SKIP: no clang with libFuzzer (apt-get install clang libclang-rt-14-dev)"; exit 77
fi
flags="-std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -Wno-unknown-pragmas -Isrc -I$top_builddir $(mpicc -showme:compile) ${HDF5_CFLAGS-$(pkg-config --cflags hdf5-serial)}"
libs="-lopenblas -lm ${HDF5_LIBS-$(pkg-config --libs hdf5-serial)} $(pkg-config --libs jansson libpcre2-8 libutf8proc libsodium) $(mpicc -showme:link)"
engine="src/config.c src/util.c src/ckpt.c src/model.c src/moe.c src/layers.c src/rng.c src/exchange.c src/comm.c src/backend_cpu.c
        src/optim.c src/privacy.c src/record.c src/json.c src/hf.c src/hf_config.c src/safetensors.c src/safetensors_write.c src/seal.c src/tokenizer.c"
for h in config ckpt safetensors hfconfig tokenizer; do
    # shellcheck disable=SC2086
    "$CLANG" $flags -o "$TMP/fuzz_$h" "tests/fuzz/fuzz_$h.c" $engine $libs 2>"$TMP/build_$h.log" \
        || { cat "$TMP/build_$h.log"; fail "building fuzz_$h"; finish; }
done

# seeds: the shipped configs; a real checkpoint of the harness's model
mkdir -p "$TMP/seed_config" "$TMP/seed_ckpt"
cp input/*.ini "$TMP/seed_config/"
printf '[model]\nd_model = 16\nn_layers = 2\nn_heads = 2\nseq_len = 16\nd_ff = 32\nn_experts = 4\ntop_k = 2\nexpert_ff = 16\nmoe_every = 2\n[train]\nsteps = 2\nwarmup_steps = 0\nbatch_size = 2\neval_every = 0\n[checkpoint]\nevery = 2\n[data]\n0 = input/data/shakespeare.txt\n' > "$TMP/seed.ini"
"$PCMOE" train "$TMP/seed.ini" --set run.dir="$TMP/seedrun" >/dev/null 2>&1 || { fail "seed run failed"; finish; }
cp "$TMP/seedrun/checkpoints/step_00000002/party_0.h5" "$TMP/seed_ckpt/"

# seeds for the Hugging Face readers: a small safetensors file (tests/hf_dump's writer, from a seed dump) and the
# config.json of each architecture
mkdir -p "$TMP/seed_safetensors" "$TMP/seed_hfconfig"
printf '{"architectures": ["OlmoeForCausalLM"], "vocab_size": 300, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 8, "num_experts": 4, "num_experts_per_tok": 2, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "max_position_embeddings": 64, "norm_topk_prob": false, "tie_word_embeddings": false, "hidden_act": "silu", "router_aux_loss_coef": 0.01, "attention_bias": false, "clip_qkv": null, "rope_scaling": null}' > "$TMP/seed_hfconfig/olmoe.json"
sed -e 's/OlmoeForCausalLM/MixtralForCausalLM/' -e 's/"num_experts"/"num_local_experts"/' -e 's/"clip_qkv": null/"sliding_window": null/' "$TMP/seed_hfconfig/olmoe.json" > "$TMP/seed_hfconfig/mixtral.json"
sed -e 's/OlmoeForCausalLM/Qwen3MoeForCausalLM/' -e 's/"intermediate_size": 8/"intermediate_size": 8, "moe_intermediate_size": 8, "head_dim": 12, "mlp_only_layers": [0], "decoder_sparse_step": 1/' \
    "$TMP/seed_hfconfig/olmoe.json" > "$TMP/seed_hfconfig/qwen3.json"
"$PYTHON" - "$TMP/seed_safetensors/s.bin" <<'PY'
import json, struct, sys
h = json.dumps({"__metadata__": {"format": "pt"}, "a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
                "c": {"dtype": "F16", "shape": [2], "data_offsets": [12, 16]}}).encode()
h += b" " * (-len(h) % 8)
data = struct.pack("<4H", 0x3f80, 0x4000, 0xc040, 0x0001) + struct.pack("<f", 2.5) + struct.pack("<2H", 0x3c00, 0x0001)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + data)
PY

# tokenizer.json seeds: a byte-level one (GPT-2's regex through ByteLevel, NFC, an added token, "a b" merges) and a
# SentencePiece-style one (Prepend, Replace, byte fallback, [a, b] merges, its decoders)
mkdir -p "$TMP/seed_tokenizer"
printf '%s' '{"added_tokens":[{"id":9,"content":"<|endoftext|>","special":true,"normalized":false}],"normalizer":{"type":"NFC"},"pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\s+|\\p{L}+|\\p{N}"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":true,"use_regex":true}]},"decoder":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{"H":0,"e":1,"l":2,"o":3,"He":4,"ll":5,"Hell":6,"Hello":7,"\u0120":8},"merges":["H e","l l","He ll","Hell o"]}}' > "$TMP/seed_tokenizer/bytelevel.json"
printf '%s' '{"added_tokens":[{"id":1,"content":"<s>","special":true,"normalized":false}],"normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"\u2581"},{"type":"Replace","pattern":{"String":" "},"content":"\u2581"}]},"pre_tokenizer":null,"decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"\u2581"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},"model":{"type":"BPE","unk_token":"<unk>","byte_fallback":true,"fuse_unk":true,"vocab":{"<unk>":0,"<s>":1,"\u2581":2,"H":3,"i":4,"Hi":5,"\u2581Hi":6,"<0xE6>":7,"<0x97>":8,"<0xA5>":9},"merges":[["H","i"],["\u2581","Hi"]]}}' > "$TMP/seed_tokenizer/sentencepiece.json"

supp=$(cd "$top_srcdir" && pwd)/tests/asan.supp # (HDF5's own reads past a damaged header: see the file)
lsupp=$(cd "$top_srcdir" && pwd)/tests/lsan.supp # (and its leak on a damaged object header)
# allocator_may_return_null: a size read from a damaged header gets NULL, as from malloc outside the sanitizer
for h in config ckpt safetensors hfconfig tokenizer; do
    n=$runs max=16384
    [ "$h" = ckpt ] && n=$((runs / 4)) max=300000 # whole checkpoint files: the seed is ~240 kB
    if (cd "$TMP" && ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:fast_unwind_on_malloc=0:suppressions="$supp" LSAN_OPTIONS=suppressions="$lsupp":fast_unwind_on_malloc=0 "./fuzz_$h" -seed=1 -runs="$n" -max_len=$max -timeout=20 "seed_$h" >"fuzz_$h.log" 2>&1); then
        ok "fuzz_$h: $n runs, $(grep -o 'cov: [0-9]*' "$TMP/fuzz_$h.log" | tail -n 1), no crash"
    else
        tail -n 30 "$TMP/fuzz_$h.log"
        fail "fuzz_$h found a crash (reproducer in the log above)"
    fi
done
finish
