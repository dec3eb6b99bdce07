// main.c: the pcmoe command line: `pcmoe train CONFIG [--set section.key=value ...] [--force]`, `pcmoe eval`,
// `pcmoe bench`, `pcmoe generate`, `pcmoe attack`, `pcmoe info`, `pcmoe keys`, `pcmoe --help`, `pcmoe --version`.
#include <errno.h>  // errno
#include <mpi.h>    // MPI_Init, MPI_Comm_size
#include <stdio.h>  // printf
#include <stdlib.h> // exit
#include <string.h> // strcmp

#include "autoconfig.h" // PACKAGE_VERSION
#include "config.h"     // Config, config_load, config_print_keys
#include "attack.h"     // attack_main
#include "comm.h"       // Comm, comm_init, comm_agree
#include "info.h"       // info_run
#include "train.h"      // train_run, TrainOptions
#include "util.h"       // fail_usage, mpiCheck, mallocCheck

static void usage(FILE *f) {
    fprintf(f,
            "pcmoe " PACKAGE_VERSION ": privacy-preserving collaborative training of Mixture-of-Experts language models\n"
            "\n"
            "Usage:\n"
            "  [mpirun -np N] pcmoe train CONFIG.ini [--set section.key=value ...] [--force] [--simulate]\n"
            "                    [--audit FILE]\n"
            "      Train as CONFIG.ini says; each --set overrides one key. Modes pcmoe, local and fedavg run one\n"
            "      MPI rank per party (N = parties.count); centralized runs on one rank. Writes RUN/config.ini\n"
            "      (resolved config), RUN/metrics.jsonl (one JSON object per party and logged step) and\n"
            "      RUN/summary.json, where RUN is run.dir.\n"
            "      --force       overwrite a run directory that already holds metrics\n"
            "      --simulate    pcmoe: compute all parties' steps in this one process with every expert\n"
            "                    local (the reference the MPI run is tested against)\n"
            "      --audit FILE  write the bytes every rank sent and received, per message kind and peer\n"
            "      --resume      continue from the newest complete checkpoint in RUN/checkpoints (model keys\n"
            "                    must match; steps, learning-rate and evaluation keys may change)\n"
            "      --stop-after S  stop after step S, writing a checkpoint, as a preempted job would\n"
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
            "  pcmoe keys        list every config key with its type, range, default and meaning\n"
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

typedef struct {
    const char *config_path;
    char **sets; // (n_sets) "section.key=value" overrides, pointing into argv
    int n_sets;
    TrainOptions opt;
    GenerateOptions gen; // pcmoe generate's options (opt.gen points here)
} TrainArgs;

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

// Parses the arguments after "train", "eval", "bench" or "generate" (cmd). Returns -1 to go on, or an exit status (0
// after --help, 2 on error).
static int parse_train_args(TrainArgs *a, int argc, char **argv, const char *cmd) {
    int eval = strcmp(cmd, "train") != 0, bench = !strcmp(cmd, "bench"), gen = !strcmp(cmd, "generate");
    memset(a, 0, sizeof *a);
    a->gen = (GenerateOptions){.party = 0, .max_new = 200, .temperature = 0.8f, .top_k = 0, .seed = 1};
    a->sets = mallocCheck(sizeof(char *) * (size_t)argc);
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--set")) {
            if (i + 1 >= argc) { fprintf(stderr, "pcmoe: error: --set needs section.key=value\n"); return 2; }
            a->sets[a->n_sets++] = argv[++i];
        } else if (!strncmp(argv[i], "--set=", 6)) {
            a->sets[a->n_sets++] = argv[i] + 6;
        } else if (!strcmp(argv[i], "--force")) {
            a->opt.force = 1;
        } else if (!strcmp(argv[i], "--simulate")) {
            a->opt.simulate = 1;
        } else if (!strcmp(argv[i], "--resume")) {
            a->opt.resume = 1;
        } else if (!strcmp(argv[i], "--stop-after") || !strcmp(argv[i], "--checkpoint") || !strcmp(argv[i], "--inject-fault")) {
            if (i + 1 >= argc) { fprintf(stderr, "pcmoe: error: %s needs a value\n", argv[i]); return 2; }
            const char *opt = argv[i], *v = argv[++i];
            if (!strcmp(opt, "--checkpoint")) a->opt.eval_dir = v;
            else if (!strcmp(opt, "--inject-fault")) a->opt.fault = v;
            else {
                char *end;
                long n = strtol(v, &end, 10);
                if (*end || n < 1 || n > 1000000000) { fprintf(stderr, "pcmoe: error: --stop-after %s: not a step number >= 1\n", v); return 2; }
                a->opt.stop_after = (int)n;
            }
        } else if (bench && (!strcmp(argv[i], "--task") || !strcmp(argv[i], "--json"))) {
            if (i + 1 >= argc) { fprintf(stderr, "pcmoe: error: %s needs a FILE\n", argv[i]); return 2; }
            if (!strcmp(argv[i], "--task")) a->opt.bench_task = argv[i + 1];
            else a->opt.bench_json = argv[i + 1];
            i++;
        } else if (gen && !strcmp(argv[i], "--no-cache")) {
            a->gen.no_cache = 1;
        } else if (gen && (!strcmp(argv[i], "--party") || !strcmp(argv[i], "--prompt") || !strcmp(argv[i], "--prompt-file") ||
                           !strcmp(argv[i], "--max-new") || !strcmp(argv[i], "--temperature") || !strcmp(argv[i], "--top-k") ||
                           !strcmp(argv[i], "--seed") || !strcmp(argv[i], "--json"))) {
            if (i + 1 >= argc) { fprintf(stderr, "pcmoe: error: %s needs a value\n", argv[i]); return 2; }
            const char *opt = argv[i], *v = argv[++i];
            long n = 0;
            if (!strcmp(opt, "--prompt")) a->gen.prompt = v;
            else if (!strcmp(opt, "--prompt-file")) a->gen.prompt_file = v;
            else if (!strcmp(opt, "--json")) a->gen.json = v;
            else if (!strcmp(opt, "--party")) { if (parse_long(opt, v, 0, CONFIG_MAX_PARTIES - 1, &n)) return 2; a->gen.party = (int)n; }
            else if (!strcmp(opt, "--max-new")) { if (parse_long(opt, v, 1, 1000000, &n)) return 2; a->gen.max_new = (int)n; }
            else if (!strcmp(opt, "--top-k")) { if (parse_long(opt, v, 0, 256, &n)) return 2; a->gen.top_k = (int)n; }
            else if (!strcmp(opt, "--seed")) {
                char *end;
                errno = 0;
                unsigned long long sd = strtoull(v, &end, 10);
                if (!*v || *end || errno || v[0] == '-') { fprintf(stderr, "pcmoe: error: --seed %s: not a whole number >= 0\n", v); return 2; }
                a->gen.seed = sd;
            } else {
                char *end;
                double t = strtod(v, &end);
                if (!*v || *end || !(t >= 0.0 && t <= 100.0)) { fprintf(stderr, "pcmoe: error: --temperature %s: not a number in [0, 100]\n", v); return 2; }
                a->gen.temperature = (float)t;
            }
        } else if (!strcmp(argv[i], "--audit")) {
            if (i + 1 >= argc) { fprintf(stderr, "pcmoe: error: --audit needs a FILE\n"); return 2; }
            a->opt.audit_path = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "pcmoe: error: unknown option '%s' for %s (try pcmoe --help)\n", argv[i], cmd);
            return 2;
        } else if (!a->config_path) {
            a->config_path = argv[i];
        } else {
            fprintf(stderr, "pcmoe: error: unexpected argument '%s' (one CONFIG.ini only)\n", argv[i]);
            return 2;
        }
    }
    if (!a->config_path) { fprintf(stderr, "pcmoe: error: %s needs a CONFIG.ini (try pcmoe --help)\n", cmd); return 2; }
    if (eval && !a->opt.eval_dir) { fprintf(stderr, "pcmoe: error: %s needs --checkpoint DIR (a checkpoint step directory)\n", cmd); return 2; }
    if (gen && !a->gen.prompt == !a->gen.prompt_file) {
        fprintf(stderr, "pcmoe: error: generate needs one of --prompt TEXT or --prompt-file FILE\n");
        return 2;
    }
    if (gen) a->opt.gen = &a->gen;
    if (bench && !a->opt.bench_task) { fprintf(stderr, "pcmoe: error: bench needs --task FILE.jsonl (a multiple-choice task)\n"); return 2; }
    if (!eval && a->opt.eval_dir) { fprintf(stderr, "pcmoe: error: --checkpoint belongs to pcmoe eval; train resumes with --resume\n"); return 2; }
    if (a->opt.resume && a->opt.force) { fprintf(stderr, "pcmoe: error: --resume and --force exclude each other\n"); return 2; }
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "pcmoe: error: no command given (try pcmoe --help)\n"); return 2; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) { usage(stdout); return 0; }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) { printf("pcmoe " PACKAGE_VERSION "\n"); return 0; }
    if (!strcmp(cmd, "keys")) {
        printf("Config keys (INI sections [parties] [fedavg] [privacy] [model] [train] [data] [run]; override with --set section.key=value):\n");
        config_print_keys(stdout);
        return 0;
    }
    if (!strcmp(cmd, "attack")) return attack_main(argc, argv);
    if (!strcmp(cmd, "info")) {
        if (argc != 3) { fprintf(stderr, "pcmoe: error: info needs one PATH (a checkpoint file, step directory or run directory)\n"); return 2; }
        return info_run(argv[2]);
    }
    if (strcmp(cmd, "train") != 0 && strcmp(cmd, "eval") != 0 && strcmp(cmd, "bench") != 0 && strcmp(cmd, "generate") != 0) {
        fprintf(stderr, "pcmoe: error: unknown command '%s' (try pcmoe --help)\n", cmd);
        return 2;
    }

    // pcmoe train CONFIG [--set k=v ...] [--force]
    TrainArgs args;
    int rc = parse_train_args(&args, argc, argv, cmd);
    if (rc >= 0) { free(args.sets); return rc; }

    mpiCheck(MPI_Init(&argc, &argv));
    Comm comm;
    comm_init(&comm);
    // every rank reads the config; the lowest rank that could not says why, and every rank stops
    Config *c = mallocCheck(sizeof(Config));
    char err[2048];
    int ok = config_load(c, args.config_path, args.sets, args.n_sets, err, sizeof err) == 0, bad = -1;
    if (!comm_agree(&comm, ok, &bad, NULL)) {
        free(c);
        free(args.sets);
        fail_usage(2, bad == comm.rank ? 1 : -1, "%s", err);
    }
    if (args.opt.gen) { // generation: one sequence, on the CPU, recording nothing
        if (c->device != DEVICE_CPU && comm.rank == 0) fprintf(stderr, "pcmoe: note: generate runs on the CPU (run.device = %s ignored)\n", DEVICE_NAMES[c->device]);
        c->device = DEVICE_CPU;
        c->batch_size = 1;
        c->record_dir[0] = '\0';
    }
    rc = train_run(c, &comm, &args.opt);
    comm_free(&comm);
    free(c);
    free(args.sets);
    finalize();
    return rc;
}
