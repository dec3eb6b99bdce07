// metrics.c: run directory, metrics.jsonl, summary.json, progress display.
#include "metrics.h"

#include <errno.h>  // errno
#include <math.h>   // isfinite, log
#include <string.h> // strerror
#include <unistd.h> // isatty, access

#include "autoconfig.h" // PACKAGE_VERSION
#include "util.h"   // fail, fail_usage, mkdir_p, now_seconds

void metrics_open(Metrics *mt, const Config *c, int force) {
    memset(mt, 0, sizeof *mt);
    snprintf(mt->run_dir, sizeof mt->run_dir, "%s", c->run_dir);
    if (mkdir_p(c->run_dir) != 0)
        fail_usage(2, 0, "run.dir = %s: cannot create directory: %s", c->run_dir, strerror(errno));
    char path[CONFIG_PATH_LEN + 64];
    snprintf(path, sizeof path, "%s/metrics.jsonl", c->run_dir);
    if (!force && access(path, F_OK) == 0)
        fail_usage(2, 0, "run.dir = %s: already holds a run (metrics.jsonl); choose another run.dir or pass --force to overwrite it", c->run_dir);
    mt->jsonl = fopenCheck(path, "w");
    snprintf(path, sizeof path, "%s/config.ini", c->run_dir);
    FILE *f = fopenCheck(path, "w");
    fprintf(f, "# resolved configuration of this run (pcmoe " PACKAGE_VERSION ")\n");
    config_write(f, c);
    if (fclose(f) != 0) fail("writing %s: %s", path, strerror(errno));
    mt->tty = isatty(2);
    mt->t_start = now_seconds();
}

static void json_num(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ",\"%s\":%.9g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

void metrics_log(Metrics *mt, const StepStats *s) {
    FILE *f = mt->jsonl;
    fprintf(f, "{\"step\":%d,\"party\":%d", s->step, s->party);
    if (s->has_train) {
        json_num(f, "train_loss", s->train_loss);
        json_num(f, "ce", s->ce);
        json_num(f, "aux", s->aux);
        json_num(f, "z", s->z);
        json_num(f, "lr", s->lr);
        json_num(f, "grad_norm", s->grad_norm);
        json_num(f, "tokens_per_s", s->tokens_per_s);
        json_num(f, "flops", s->flops);
    }
    if (s->has_val) {
        json_num(f, "val_loss", s->val_loss);
        json_num(f, "val_bpb", s->val_loss / log(2.0));
    }
    fprintf(f, "}\n");
    fflush(f);
}

void metrics_progress(Metrics *mt, const StepStats *s, int total_steps, int print_plain) {
    if (!mt->tty && !print_plain) return;
    double elapsed = now_seconds() - mt->t_start;
    double eta = s->step > 0 ? elapsed / s->step * (total_steps - s->step) : 0.0;
    char line[256];
    int n = snprintf(line, sizeof line, "step %d/%d", s->step, total_steps);
    if (s->has_train)
        n += snprintf(line + n, sizeof line - n, " | loss %.4f | %.1fk tok/s", s->train_loss, s->tokens_per_s / 1000.0);
    if (s->has_val)
        n += snprintf(line + n, sizeof line - n, " | val %.4f (%.3f bpb)", s->val_loss, s->val_loss / log(2.0));
    snprintf(line + n, sizeof line - n, " | ETA %d:%02d", (int)eta / 60, (int)eta % 60);
    if (mt->tty) fprintf(stderr, "\r%-100s%s", line, s->step == total_steps ? "\n" : "");
    else fprintf(stderr, "%s\n", line);
    fflush(stderr);
}

void metrics_summary(Metrics *mt, const StepStats *last, double best_val, int steps, double tokens,
                     size_t n_params, MemStats mem) {
    char path[CONFIG_PATH_LEN + 64];
    snprintf(path, sizeof path, "%s/summary.json", mt->run_dir);
    FILE *f = fopenCheck(path, "w");
    double secs = now_seconds() - mt->t_start;
    fprintf(f, "{\"steps\":%d,\"party\":%d", steps, last->party);
    json_num(f, "final_train_loss", last->train_loss);
    json_num(f, "final_val_loss", last->has_val ? last->val_loss : NAN);
    json_num(f, "final_val_bpb", last->has_val ? last->val_loss / log(2.0) : NAN);
    json_num(f, "best_val_loss", best_val);
    json_num(f, "tokens", tokens);
    json_num(f, "seconds", secs);
    json_num(f, "tokens_per_s", tokens / secs);
    json_num(f, "flops_per_step", last->flops);
    fprintf(f, ",\"params\":%zu", n_params);
    fprintf(f, ",\"memory_bytes\":{\"params\":%zu,\"grads\":%zu,\"optim\":%zu,\"acts\":%zu}", mem.params,
            mem.grads, mem.optim, mem.acts);
    fprintf(f, "}\n");
    if (fclose(f) != 0) fail("writing %s: %s", path, strerror(errno));
}

void metrics_close(Metrics *mt) {
    if (mt->jsonl && fclose(mt->jsonl) != 0) fail("writing %s/metrics.jsonl: %s", mt->run_dir, strerror(errno));
    mt->jsonl = NULL;
}
