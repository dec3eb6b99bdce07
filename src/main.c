// main.c: the pcmoe command line. Each command has one entry: train (train.h), eval (run.h), bench
// (bench.h), generate (generate.h), attack (attack.h), info (info.h), keys (config.h); main() parses the
// arguments, starts MPI, reads the config on every rank and calls it.
#include <errno.h>  // errno
#include <mpi.h>    // MPI_Init
#include <stdio.h>  // printf
#include <stdlib.h> // strtol, strtod, strtoull
#include <string.h> // strcmp

#include "autoconfig.h" // PACKAGE_VERSION
#include "attack.h"     // attack_main
#include "bench.h"      // bench_run, BenchOptions
#include "comm.h"       // Comm, comm_init, comm_agree
#include "meet.h"       // meet_parties: train --party P --connect NAME
#include "config.h"     // Config, config_load, config_keys_main
#include "blas.h"       // blas_choose_kernels
#include "export.h"     // export_run, ExportOptions
#include "plan.h"       // plan_main
#include "generate.h"   // generate_run, GenerateOptions
#include "info.h"       // info_run
#include "run.h"        // run_eval, RunOptions
#include "seal.h"       // seal_keygen
#include "tokenizer.h"  // tokenizer_main
#include "train.h"      // train_run, TrainOptions
#include "util.h"       // fail_usage, mpiCheck, mallocCheck, finalize

static void usage(FILE *f) {
    fprintf(f,
            "pcmoe " PACKAGE_VERSION
            ": privacy-preserving collaborative training of Mixture-of-Experts language models\n"
            "\n"
            "Usage:\n"
            "  [mpirun -np N] pcmoe train CONFIG.ini [--set section.key=value ...] [--force] [--simulate]\n"
            "                    [--audit FILE]\n"
            "      Train as CONFIG.ini says; each --set overrides one key. Modes pcmoe, local and fedavg run one\n"
            "      MPI rank per party (N = parties.count; a pcmoe party may have parties.ranks_per_party ranks,\n"
            "      N x ranks_per_party in all); centralized runs on one rank. Writes RUN/config.ini\n"
            "      (resolved config), RUN/metrics.jsonl (one JSON object per party and logged step) and\n"
            "      RUN/summary.json, where RUN is run.dir.\n"
            "      --force       overwrite a run directory that already holds metrics\n"
            "      --simulate    pcmoe: compute all parties' steps in this one process with every expert\n"
            "                    local (the reference the MPI run is tested against)\n"
            "      --audit FILE  write the bytes every rank sent and received, per message kind and peer\n"
            "      --resume      continue from the newest complete checkpoint in RUN/checkpoints (model keys\n"
            "                    must match; steps, learning-rate and evaluation keys may change; pcmoe:\n"
            "                    parties may leave and join, and ranks_per_party may change, the experts\n"
            "                    re-sharded). A checkpoint that fails its checksums is named, with the newest\n"
            "                    one that verifies\n"
            "      --resume=STEP continue from the complete checkpoint of step STEP instead; newer ones are\n"
            "                    set aside (renamed step_N.set-aside), never deleted\n"
            "      --stop-after S  stop after step S, writing a checkpoint, as a preempted job would\n"
            "      --party P --connect NAME  this job is party P's own (its parties.ranks_per_party ranks): it\n"
            "                    meets the other parties' jobs under NAME through the name server its mpirun\n"
            "                    was given (mpirun --ompi-server file:URI; see docs/cluster.md)\n"
            "      --inject-fault counts|foreign|nan|nan-grad  test hook: the last party sends bad routing\n"
            "                    counts, a foreign expert id or NaN rows (the others must stop the job, naming\n"
            "                    it), or its gradient turns NaN in step 6 (training must stop, naming it)\n"
            "  [mpirun -np N] pcmoe eval CONFIG.ini --checkpoint RUN/checkpoints/step_NNNNNNNN [--set ...]\n"
            "      Load a checkpoint and print every party's validation loss (same ranks as training).\n"
            "  [mpirun -np N] pcmoe bench CONFIG.ini --checkpoint DIR --task FILE.jsonl [--json OUT] [--set ...]\n"
            "      Score a multiple-choice task (JSON lines {\"query\", \"choices\", \"gold\"}, e.g. input/eval/\n"
            "      arc_easy.jsonl) with every party's model: each choice by the log-likelihood of \" \" + choice\n"
            "      after the query. Prints acc and acc_norm (log-likelihood per byte) per party; --json OUT also\n"
            "      writes them, with every choice's log-likelihood for the parties on rank 0.\n"
            "  [mpirun -np N] pcmoe generate CONFIG.ini --checkpoint DIR (--prompt TEXT | --prompt-file FILE)\n"
            "                    [--party P] [--max-new N] [--temperature T] [--top-k K] [--seed S] [--json OUT]\n"
            "                    [--no-cache] [--simulate] [--audit FILE] [--set ...]\n"
            "      Continue the prompt with party P's model (default 0): its backbone and router sample, on the CPU,\n"
            "      with a KV cache (one position per new byte); in pcmoe over MPI the other parties serve their\n"
            "      experts through the exchange and see only the rows routed to them. Prints prompt + text on\n"
            "      stdout. --max-new bytes (200), --temperature (0.8; 0 = most probable byte), --top-k (0 = all),\n"
            "      --seed (1): the same seed gives the same text. --json OUT: each byte, its log-probability and\n"
            "      context length. --no-cache: recompute every context whole (the cache's reference; slow).\n"
            "  pcmoe attack CONFIG --checkpoint DIR --records DIR --attacker A --victim V [--white-box]\n"
            "                    [--victim-noise S] [--json FILE]\n"
            "      Reconstruction study: can party A recover party V's bytes from what it received? (recorded by\n"
            "      a run with privacy.record_received = DIR). The attack ladder on the rows and the gradient rows:\n"
            "      inversion with A's own pairs, with 100 or 1000 known pairs of V, unsupervised alignment, and\n"
            "      the experts rows reached; adaptive to the run's defence (--victim-noise: V's noise multiplier\n"
            "      when the run set privacy.target_epsilon). Prints accuracy per channel, attack and layer.\n"
            "  pcmoe info PATH   describe a checkpoint (a party_R.h5 file, a step directory, or a run\n"
            "                    directory: its newest complete checkpoint), loading and checking every dataset\n"
            "  [mpirun -np N] pcmoe export CONFIG.ini --checkpoint DIR --out OUT [--party P] [--dtype bf16|f32]\n"
            "                    [--simulate] [--max-shard-mb N] [--audit FILE]\n"
            "      Write party P's model (its backbone, every expert) as a Hugging Face checkpoint directory that\n"
            "      transformers loads: model.hf's config.json, safetensors (sharded past N MB, default 5000) and\n"
            "      the tokenizer. Over MPI every party runs it (its consent) and the owners send P their experts,\n"
            "      nothing else; in one process (centralized, one party, --simulate) the files are read there.\n"
            "  pcmoe plan CONFIG.ini [--set ...] [--json OUT]\n"
            "      Print the bytes each party's process would allocate (parameters, gradients, AdamW state,\n"
            "      activations, exchange buffers at balanced and worst routing) without allocating them, and the\n"
            "      ratio to one whole model. --json OUT also writes them.\n"
            "  pcmoe tokenize TOKENIZER.json [FILE] [--decode]\n"
            "                    the token ids of FILE (default: standard input), whitespace-separated, as a\n"
            "                    Hugging Face tokenizer.json gives them (no special tokens added); --decode: the\n"
            "                    text of the ids read\n"
            "  pcmoe keygen --party P --out FILE\n"
            "                    write a new X25519 key pair for party P: FILE (its secret key, mode 0600, the\n"
            "                    file parties.keys names, once every other party's FILE.pub is appended to it) and\n"
            "                    FILE.pub (the public key to give the other parties); never overwrites\n"
            "  pcmoe keys [--markdown | --man]\n"
            "                    list every config key with its type, range, default and meaning (as the Markdown\n"
            "                    page docs/config.md, or as the man page's list)\n"
            "  pcmoe --help      this text\n"
            "  pcmoe --version   version\n"
            "\n"
            "Example:\n"
            "  pcmoe train input/shakespeare.ini --set train.steps=200 --set run.dir=runs/try\n"
            "  mpirun -np 4 --oversubscribe pcmoe train input/demo.ini\n"
            "\n"
            "Signals: SIGUSR1 or SIGTERM (e.g. Slurm's --signal before the time limit) makes every rank write a\n"
            "checkpoint at the end of the current step and exit with status 3; --resume continues.\n"
            "\n"
            "Exit status: 0 success, 1 runtime failure, 2 bad command line, config or data, 3 stopped by a\n"
            "signal after writing a checkpoint.\n");
}

// The command line of train, eval, bench and generate.
typedef struct {
    const char *config_path;
    char **sets;         // (n_sets) "section.key=value" overrides, pointing into argv
    int n_sets;
    RunOptions run;      // --simulate, --checkpoint, --audit, --inject-fault
    const char *meet;    // train --connect NAME: this job is party meet_party of a run that meets (meet.h)
    int meet_party;      // --party P (train)
    int meet_party_given;
    TrainOptions train;  // --force, --resume, --stop-after
    BenchOptions bench;  // --task, --json
    GenerateOptions gen; // --party, --prompt, ...
    ExportOptions exp;   // --out, --party, --dtype, --max-shard-mb
} Args;

// A number option's value: a whole number in [lo, hi] (the option's name in errors). Returns 0, or 2.
static int parse_long(const char *opt, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (!*v || *end || errno || n < lo || n > hi) {
        fprintf(stderr, "pcmoe: error: %s %s: not a whole number in [%ld, %ld]\n", opt, v, lo, hi);
        return 2;
    }
    *out = n;
    return 0;
}

// generate's options with a value. Returns 0, or 2 after saying what is wrong.
static int parse_generate_option(GenerateOptions *g, const char *opt, const char *v) {
    long n = 0;
    if (!strcmp(opt, "--prompt")) g->prompt = v;
    else if (!strcmp(opt, "--prompt-file")) g->prompt_file = v;
    else if (!strcmp(opt, "--json")) g->json = v;
    else if (!strcmp(opt, "--party")) {
        if (parse_long(opt, v, 0, CONFIG_MAX_PARTIES - 1, &n)) return 2;
        g->party = (int)n;
    } else if (!strcmp(opt, "--max-new")) {
        if (parse_long(opt, v, 1, 1000000, &n)) return 2;
        g->max_new = (int)n;
    } else if (!strcmp(opt, "--top-k")) {
        if (parse_long(opt, v, 0, 256, &n)) return 2;
        g->top_k = (int)n;
    } else if (!strcmp(opt, "--seed")) {
        char *end;
        errno = 0;
        unsigned long long sd = strtoull(v, &end, 10);
        if (!*v || *end || errno || v[0] == '-') {
            fprintf(stderr, "pcmoe: error: --seed %s: not a whole number >= 0\n", v);
            return 2;
        }
        g->seed = sd;
    } else {
        char *end;
        double t = strtod(v, &end);
        if (!*v || *end || !(t >= 0.0 && t <= 100.0)) {
            fprintf(stderr, "pcmoe: error: --temperature %s: not a number in [0, 100]\n", v);
            return 2;
        }
        g->temperature = (float)t;
    }
    return 0;
}

// export's options with a value. Returns 0, or 2 after saying what is wrong.
static int parse_export_option(ExportOptions *x, const char *opt, const char *v) {
    long n = 0;
    if (!strcmp(opt, "--out")) x->out = v;
    else if (!strcmp(opt, "--party")) {
        if (parse_long(opt, v, 0, CONFIG_MAX_PARTIES - 1, &n)) return 2;
        x->party = (int)n;
    } else if (!strcmp(opt, "--max-shard-mb")) {
        if (parse_long(opt, v, 1, 1000000, &n)) return 2;
        x->max_shard_mb = n;
    } else if (!strcmp(v, "bf16") || !strcmp(v, "f32")) x->bf16 = !strcmp(v, "bf16");
    else {
        fprintf(stderr, "pcmoe: error: --dtype %s: bf16 or f32\n", v);
        return 2;
    }
    return 0;
}

static int is_export_option(const char *o) {
    return !strcmp(o, "--out") || !strcmp(o, "--party") || !strcmp(o, "--dtype") || !strcmp(o, "--max-shard-mb");
}

static int is_generate_option(const char *o) {
    static const char *const names[] = {"--party", "--prompt", "--prompt-file", "--max-new", "--temperature",
                                        "--top-k", "--seed", "--json", NULL};
    for (int i = 0; names[i]; i++)
        if (!strcmp(o, names[i])) return 1;
    return 0;
}

// The options every one of train, eval, bench and generate takes with a value: --stop-after, --checkpoint,
// --inject-fault, --audit. Returns 0, or 2 after saying what is wrong.
static int parse_run_option(Args *a, const char *opt, const char *v) {
    if (!strcmp(opt, "--checkpoint")) a->run.checkpoint = v;
    else if (!strcmp(opt, "--inject-fault")) a->run.fault = v;
    else if (!strcmp(opt, "--audit")) a->run.audit_path = v;
    else {
        char *end;
        long n = strtol(v, &end, 10);
        if (*end || n < 1 || n > 1000000000) {
            fprintf(stderr, "pcmoe: error: --stop-after %s: not a step number >= 1\n", v);
            return 2;
        }
        a->train.stop_after = (int)n;
    }
    return 0;
}

// One argument (argv[*i], and its value, which moves *i on) of command cmd. Returns -1 to go on, or an exit
// status (0 after --help, 2 on error).
static int parse_arg(Args *a, int argc, char **argv, int *i, const char *cmd) {
    int bench = !strcmp(cmd, "bench"), gen = !strcmp(cmd, "generate"), exp = !strcmp(cmd, "export");
    const char *o = argv[*i];
    int train = !strcmp(cmd, "train"), meet = train && (!strcmp(o, "--connect") || !strcmp(o, "--party"));
    int valued = meet || !strcmp(o, "--set") || !strcmp(o, "--stop-after") || !strcmp(o, "--checkpoint") ||
                 !strcmp(o, "--inject-fault") || !strcmp(o, "--audit") || (bench && (!strcmp(o, "--task") ||
                 !strcmp(o, "--json"))) || (gen && is_generate_option(o)) || (exp && is_export_option(o));
    if (valued && *i + 1 >= argc) {
        int file = !strcmp(o, "--audit") || (bench && (!strcmp(o, "--task") || !strcmp(o, "--json")));
        const char *what = !strcmp(o, "--set") ? "section.key=value" : file ? "a FILE" : "a value";
        fprintf(stderr, "pcmoe: error: %s needs %s\n", o, what);
        return 2;
    }
    const char *v = valued ? argv[++*i] : NULL;
    if (!strcmp(o, "--set")) a->sets[a->n_sets++] = (char *)v;
    else if (!strncmp(o, "--set=", 6)) a->sets[a->n_sets++] = (char *)o + 6;
    else if (!strcmp(o, "--force")) a->train.force = 1;
    else if (!strcmp(o, "--simulate")) a->run.simulate = 1;
    else if (!strcmp(o, "--resume")) a->train.resume = 1;
    else if (train && !strncmp(o, "--resume=", 9)) {
        long n;
        if (parse_long("--resume=STEP", o + 9, 0, 1000000000, &n)) return 2;
        a->train.resume = 1;
        a->train.resume_step = (int)n;
    }    else if (meet && !strcmp(o, "--connect")) a->meet = v;
    else if (meet) {
        long n;
        if (parse_long(o, v, 0, CONFIG_MAX_PARTIES - 1, &n)) return 2;
        a->meet_party = (int)n;
        a->meet_party_given = 1;
    } else if (bench && !strcmp(o, "--task")) a->bench.task = v;
    else if (bench && !strcmp(o, "--json")) a->bench.json = v;
    else if (gen && !strcmp(o, "--no-cache")) a->gen.no_cache = 1;
    else if (gen && is_generate_option(o)) return parse_generate_option(&a->gen, o, v) ? 2 : -1;
    else if (exp && is_export_option(o)) return parse_export_option(&a->exp, o, v) ? 2 : -1;
    else if (valued) return parse_run_option(a, o, v) ? 2 : -1;
    else if (!strcmp(o, "--help") || !strcmp(o, "-h")) { usage(stdout); return 0;
    } else if (o[0] == '-') {
        fprintf(stderr, "pcmoe: error: unknown option '%s' for %s (try pcmoe --help)\n", o, cmd);
        return 2;
    } else if (!a->config_path) a->config_path = o;
    else { fprintf(stderr, "pcmoe: error: unexpected argument '%s' (one CONFIG.ini only)\n", o); return 2; }
    return -1;
}

// Parses the arguments after "train", "eval", "bench" or "generate" (cmd). Returns -1 to go on, or an exit
// status (0 after --help, 2 on error).
static int parse_args(Args *a, int argc, char **argv, const char *cmd) {
    int train = !strcmp(cmd, "train"), bench = !strcmp(cmd, "bench"), gen = !strcmp(cmd, "generate");
    memset(a, 0, sizeof *a);
    a->gen = (GenerateOptions){.party = 0, .max_new = 200, .temperature = 0.8f, .top_k = 0, .seed = 1};
    a->exp = (ExportOptions){.max_shard_mb = 5000};
    a->train.resume_step = -1;
    a->sets = mallocCheck(sizeof(char *) * (size_t)argc);
    for (int i = 2; i < argc; i++) {
        int rc = parse_arg(a, argc, argv, &i, cmd);
        if (rc >= 0) return rc;
    }
    const char *why = NULL;
    if (!a->config_path) { fprintf(stderr, "pcmoe: error: %s needs a CONFIG.ini (try pcmoe --help)\n", cmd); return 2; }
    if (!train && !a->run.checkpoint) {
        fprintf(stderr, "pcmoe: error: %s needs --checkpoint DIR (a checkpoint step directory)\n", cmd);
        return 2;
    }
    if (gen && !a->gen.prompt == !a->gen.prompt_file) why = "generate needs one of --prompt TEXT or --prompt-file FILE";
    else if (bench && !a->bench.task) why = "bench needs --task FILE.jsonl (a multiple-choice task)";
    else if (!strcmp(cmd, "export") && !a->exp.out) why = "export needs --out DIR (a new directory)";
    else if (train && a->run.checkpoint) why = "--checkpoint belongs to pcmoe eval; train resumes with --resume";
    else if (a->train.resume && a->train.force) why = "--resume and --force exclude each other";
    else if (!a->meet != !a->meet_party_given) why = "--party P and --connect NAME go together (a party's own job)";
    else if (a->meet && a->run.simulate) why = "--connect meets other parties' jobs; --simulate runs them all here";
    if (why) { fprintf(stderr, "pcmoe: error: %s\n", why); return 2; }
    return -1;
}

// Every rank reads the config; the lowest rank that could not says why, and every rank stops.
static Config *load_config(Comm *comm, const Args *a) {
    Config *c = mallocCheck(sizeof(Config));
    char err[2048];
    int ok = config_load(c, a->config_path, a->sets, a->n_sets, err, sizeof err) == 0, bad = -1;
    if (!comm_agree(comm, ok, &bad, NULL)) {
        free(c);
        free(a->sets);
        fail_usage(2, bad == comm->rank ? 1 : -1, "%s", err);
    }
    return c;
}

// pcmoe keygen --party P --out FILE. Returns the exit status.
static int keygen_main(int argc, char **argv) {
    const char *out = NULL;
    long party = -1;
    for (int i = 2; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--out")) out = argv[++i];
        else if (i + 1 < argc && !strcmp(argv[i], "--party")) {
            if (parse_long("--party", argv[++i], 0, CONFIG_MAX_PARTIES - 1, &party)) return 2;
        } else {
            fprintf(stderr, "pcmoe: error: keygen: unknown or incomplete option '%s' (keygen --party P --out FILE)\n",
                    argv[i]);
            return 2;
        }
    }
    if (!out || party < 0) { fprintf(stderr, "pcmoe: error: keygen needs --party P and --out FILE\n"); return 2; }
    return seal_keygen(out, (int)party);
}

// The commands that need no MPI: --help, --version, keys, keygen, attack, tokenize, plan, info. Returns their
// exit status, or -1 for the others.
static int run_standalone(int argc, char **argv) {
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) { usage(stdout); return 0; }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) { printf("pcmoe " PACKAGE_VERSION "\n"); return 0; }
    if (!strcmp(cmd, "keys")) return config_keys_main(argc, argv);
    if (!strcmp(cmd, "keygen")) return keygen_main(argc, argv);
    if (!strcmp(cmd, "attack")) return attack_main(argc, argv);
    if (!strcmp(cmd, "tokenize")) return tokenizer_main(argc, argv);
    if (!strcmp(cmd, "plan")) return plan_main(argc, argv);
    if (!strcmp(cmd, "info")) {
        if (argc != 3) {
            fprintf(stderr, "pcmoe: error: info needs one PATH (a checkpoint file, step directory or run directory)\n");
            return 2;
        }
        return info_run(argv[2]);
    }
    if (strcmp(cmd, "train") && strcmp(cmd, "eval") && strcmp(cmd, "bench") && strcmp(cmd, "generate") &&
        strcmp(cmd, "export")) {
        fprintf(stderr, "pcmoe: error: unknown command '%s' (try pcmoe --help)\n", cmd);
        return 2;
    }
    return -1;
}

int main(int argc, char **argv) {
    blas_choose_kernels(argv); // (may run the program again, with OpenBLAS's kernels for this CPU)
    if (argc < 2) { fprintf(stderr, "pcmoe: error: no command given (try pcmoe --help)\n"); return 2; }
    const char *cmd = argv[1];
    int rc = run_standalone(argc, argv);
    if (rc >= 0) return rc;
    Args a;
    rc = parse_args(&a, argc, argv, cmd);
    if (rc >= 0) { free(a.sets); return rc; }

    mpiCheck(MPI_Init(&argc, &argv));
    Comm comm;
    comm_init(&comm);
    Config *c = load_config(&comm, &a);
    comm.peer_timeout = c->peer_timeout;
    if (a.meet) meet_parties(&comm, c, a.meet_party, a.meet); // (its own job: the parties meet here)
    if (c->ranks_per_party > 1 && strcmp(cmd, "train"))
        fail_usage(2, 0, "parties.ranks_per_party = %d: pcmoe %s runs one rank per party (only train runs several "
                   "yet); set parties.ranks_per_party = 1", c->ranks_per_party, cmd);
    if (!strcmp(cmd, "train")) rc = train_run(c, &comm, &a.run, &a.train);
    else if (!strcmp(cmd, "eval")) rc = run_eval(c, &comm, &a.run);
    else if (!strcmp(cmd, "bench")) rc = bench_run(c, &comm, &a.run, &a.bench);
    else if (!strcmp(cmd, "export")) rc = export_run(c, &comm, &a.run, &a.exp);
    else rc = generate_run(c, &comm, &a.run, &a.gen);
    comm_free(&comm);
    free(c);
    free(a.sets);
    finalize();
    return rc;
}
