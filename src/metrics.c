// metrics.c: run directory, metrics.jsonl, summary.json, progress display.
#include "metrics.h"

#include <errno.h>  // errno
#include <math.h>   // isfinite, log
#include <string.h> // strerror
#include <stdlib.h> // free
#include <unistd.h> // isatty, access, ftruncate

#include "autoconfig.h" // PACKAGE_VERSION
#include "json.h"       // Json: metrics lines and summary.json
#include "util.h"       // mkdir_p, now_seconds, error_set, write_file_atomic, Text

void step_stats_pack(const StepStats *s, double *o) {
    double v[STEP_STATS_DOUBLES] = {s->step, s->party, s->has_train, s->train_loss, s->ce, s->aux, s->z, s->lr,
                                    s->grad_norm, s->tokens_per_s, s->flops, s->has_val, s->val_loss, s->bytes_sent,
                                    s->bytes_recv, (double)s->mem.params, (double)s->mem.grads, (double)s->mem.optim,
                                    (double)s->mem.acts, (double)s->mem.buffers, s->rss_peak, s->device_peak, s->has_dp,
                                    s->epsilon, s->noise_multiplier, s->val_bpb};
    memcpy(o, v, sizeof v);
}

void step_stats_unpack(StepStats *s, const double *v) {
    *s = (StepStats){.step = (int)v[0], .party = (int)v[1], .has_train = (int)v[2], .train_loss = v[3], .ce = v[4],
                     .aux = v[5], .z = v[6], .lr = (float)v[7], .grad_norm = v[8], .tokens_per_s = v[9],
                     .flops = v[10], .has_val = (int)v[11], .val_loss = v[12], .bytes_sent = v[13],
                     .bytes_recv = v[14], .rss_peak = v[20], .device_peak = v[21], .has_dp = (int)v[22],
                     .epsilon = v[23], .noise_multiplier = v[24], .val_bpb = v[25]};
    s->mem = (MemStats){(size_t)v[15], (size_t)v[16], (size_t)v[17], (size_t)v[18], (size_t)v[19]};
}

// 1 when errno says the storage failed (full, over quota, I/O error) rather than the path being unusable.
static int storage_fault(int e) { return e == ENOSPC || e == EDQUOT || e == EIO || e == EFBIG; }

// Keeps the lines of `path` whose "step" is at most `step` (through path.tmp and a rename).
static int metrics_truncate(const char *path, int step, char *err, size_t len) {
    FILE *in = fopen(path, "r");
    if (!in) return 0; // nothing logged yet
    char tmp[CONFIG_PATH_LEN + 80];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) { fclose(in); return error_set(err, len, "%s: cannot write: %s", tmp, strerror(errno)); }
    char line[8192];
    while (fgets(line, sizeof line, in)) {
        int s = -1;
        if (sscanf(line, "{\"step\":%d", &s) == 1 && s <= step) fputs(line, out);
    }
    fclose(in);
    int bad = ferror(out);
    if (fclose(out) != 0 || bad || rename(tmp, path) != 0) {
        error_set(err, len, "%s: cannot rewrite: %s", path, strerror(errno ? errno : EIO));
        unlink(tmp);
        return 1;
    }
    return 0;
}

int metrics_open(Metrics *mt, const Config *c, const char *suffix, int force, int write_config, int resume_step,
                 char *err, size_t len) {
    memset(mt, 0, sizeof *mt);
    snprintf(mt->run_dir, sizeof mt->run_dir, "%s", c->run_dir);
    snprintf(mt->suffix, sizeof mt->suffix, "%s", suffix);
    if (mkdir_p(c->run_dir) != 0) {
        int e = errno;
        return error_set(err, len, "run.dir = %s: cannot create directory: %s", c->run_dir, strerror(e)) -
               storage_fault(e);
    }
    char path[CONFIG_PATH_LEN + 64];
    snprintf(path, sizeof path, "%s/metrics%s.jsonl", c->run_dir, suffix);
    if (resume_step < 0 && !force && access(path, F_OK) == 0)
        return error_set(err, len,
                         "run.dir = %s: already holds a run (metrics%s.jsonl); pass --resume to continue it, --force "
                         "to overwrite it, or choose another run.dir",
                         c->run_dir, suffix);
    if (resume_step >= 0 && metrics_truncate(path, resume_step, err, len)) return 1;
    snprintf(mt->jsonl_path, sizeof mt->jsonl_path, "%s", path);
    mt->jsonl = fopen(path, resume_step >= 0 ? "a" : "w");
    if (!mt->jsonl) {
        int e = errno;
        return error_set(err, len, "%s: cannot write: %s", path, strerror(e)) - storage_fault(e);
    }
    mt->jsonl_good = ftell(mt->jsonl);
    if (write_config) {
        Text text = {0};
        text_printf(&text, "# resolved configuration of this run (pcmoe " PACKAGE_VERSION ")\n");
        config_write(&text, c);
        snprintf(path, sizeof path, "%s/config.ini", c->run_dir);
        int rc = write_file_atomic(path, text.s, text.len, err, len);
        text_free(&text);
        if (rc) return 1;
    }
    mt->tty = isatty(2);
    mt->t_start = now_seconds();
    return 0;
}

// Memory by category (on cuda, params to acts and the exchange's device buffers are device memory) and
// the process's peaks: resident host memory, and on cuda the device memory its backend held.
static void json_mem(Json *j, const StepStats *s) {
    const MemStats *m = &s->mem;
    json_member_uint(j, "mem_params", m->params);
    json_member_uint(j, "mem_grads", m->grads);
    json_member_uint(j, "mem_optim", m->optim);
    json_member_uint(j, "mem_acts", m->acts);
    json_member_uint(j, "mem_buffers", m->buffers);
    json_member_number(j, "rss_peak", s->rss_peak);
    if (s->device_peak > 0) json_member_number(j, "device_peak", s->device_peak);
}

// One party's step as a JSON line.
static void json_step(Json *j, const StepStats *s) {
    json_open_object(j);
    json_member_int(j, "step", s->step);
    json_member_int(j, "party", s->party);
    if (s->has_train) {
        json_member_number(j, "train_loss", s->train_loss);
        json_member_number(j, "ce", s->ce);
        json_member_number(j, "aux", s->aux);
        json_member_number(j, "z", s->z);
        json_member_number(j, "lr", s->lr);
        json_member_number(j, "grad_norm", s->grad_norm);
        json_member_number(j, "tokens_per_s", s->tokens_per_s);
        json_member_number(j, "flops", s->flops);
    }
    if (s->has_val) {
        json_member_number(j, "val_loss", s->val_loss);
        json_member_number(j, "val_bpb", s->val_bpb);
    }
    json_member_number(j, "bytes_sent", s->bytes_sent);
    json_member_number(j, "bytes_recv", s->bytes_recv);
    if (s->has_dp) {
        json_member_number(j, "epsilon", s->epsilon);
        json_member_number(j, "noise_multiplier", s->noise_multiplier);
    }
    json_mem(j, s);
    json_close_object(j);
    json_end_line(j);
}

int metrics_log(Metrics *mt, const StepStats *s, char *err, size_t len) {
    FILE *f = mt->jsonl;
    Json j = {0};
    json_step(&j, s);
    size_t n = fwrite(j.out.s, 1, j.out.len, f), want = j.out.len;
    json_free(&j);
    if (n == want && fflush(f) == 0 && !ferror(f)) {
        mt->jsonl_good = ftell(f);
        return 0;
    }
    // not written whole: drop the partial line, so the file ends with the last complete one
    int why = errno ? errno : EIO;
    if (ftruncate(fileno(f), mt->jsonl_good) != 0) { /* the error below stands */ }
    return error_set(err, len, "%s: cannot write: %s", mt->jsonl_path, strerror(why)) - 1;
}

void metrics_progress(Metrics *mt, const StepStats *s, int n, int total_steps, int print_plain) {
    if (!mt->tty && !print_plain) return;
    double loss = 0.0, val = 0.0, bpb = 0.0, tps = 0.0;
    int n_loss = 0, n_val = 0, step = s[0].step;
    for (int i = 0; i < n; i++) {
        if (s[i].has_train) { loss += s[i].train_loss; tps += s[i].tokens_per_s; n_loss++; }
        if (s[i].has_val) { val += s[i].val_loss; bpb += s[i].val_bpb; n_val++; }
    }
    double elapsed = now_seconds() - mt->t_start;
    double eta = step > 0 ? elapsed / step * (total_steps - step) : 0.0;
    char line[256];
    int k = snprintf(line, sizeof line, "step %d/%d", step, total_steps);
    if (n_loss) k += snprintf(line + k, sizeof line - k, " | loss %.4f | %.1fk tok/s", loss / n_loss, tps / 1000.0);
    if (n_val) k += snprintf(line + k, sizeof line - k, " | val %.4f (%.3f bpb)", val / n_val, bpb / n_val);
    double eps = -1.0; // the largest epsilon of the parties with the DP defence
    for (int i = 0; i < n; i++) if (s[i].has_dp && s[i].epsilon > eps) eps = s[i].epsilon;
    if (eps >= 0.0) k += snprintf(line + k, sizeof line - k, " | eps %.3g", eps);
    if (n > 1) k += snprintf(line + k, sizeof line - k, " | %d parties", n);
    snprintf(line + k, sizeof line - k, " | ETA %d:%02d", (int)eta / 60, (int)eta % 60);
    if (mt->tty) fprintf(stderr, "\r%-110s%s", line, step == total_steps ? "\n" : "");
    else fprintf(stderr, "%s\n", line);
    fflush(stderr);
}

int metrics_summary(Metrics *mt, const Config *c, const StepStats *last, const double *best_val, int n, int steps,
                    double tokens, char *err, size_t len) {
    char path[CONFIG_PATH_LEN + 64];
    snprintf(path, sizeof path, "%s/summary%s.json", mt->run_dir, mt->suffix);
    double secs = now_seconds() - mt->t_start;
    Json j = {0};
    json_open_object(&j);
    json_member_string(&j, "mode", MODE_NAMES[c->mode]);
    json_member_string(&j, "schedule", SCHEDULE_NAMES[c->schedule]);
    json_member_string(&j, "device", DEVICE_NAMES[c->device]);
    json_member_int(&j, "n_parties", c->n_parties);
    json_member_int(&j, "steps", steps);
    json_member_number(&j, "tokens", tokens);
    json_member_number(&j, "seconds", secs);
    json_member_number(&j, "tokens_per_s", tokens / secs);
    json_key(&j, "parties");
    json_open_array(&j);
    for (int i = 0; i < n; i++) {
        const StepStats *s = &last[i];
        json_break(&j, "\n  ");
        json_open_object(&j);
        json_member_int(&j, "party", s->party);
        json_member_number(&j, "final_train_loss", s->has_train ? s->train_loss : NAN);
        json_member_number(&j, "final_val_loss", s->has_val ? s->val_loss : NAN);
        json_member_number(&j, "final_val_bpb", s->has_val ? s->val_bpb : NAN);
        json_member_number(&j, "best_val_loss", best_val[i]);
        json_member_number(&j, "flops_per_step", s->flops);
        json_member_uint(&j, "params", s->mem.params / sizeof(float));
        if (s->has_dp) {
            json_member_number(&j, "epsilon", s->epsilon);
            json_key(&j, "delta");
            json_number_digits(&j, c->dp_delta, 6);
            json_member_number(&j, "noise_multiplier", s->noise_multiplier);
        }
        json_mem(&j, s);
        json_close_object(&j);
    }
    json_space(&j, "\n");
    json_close_array(&j);
    json_close_object(&j);
    json_end_line(&j);
    return json_write(&j, path, err, len);
}

int metrics_close(Metrics *mt, char *err, size_t len) {
    int rc = 0;
    if (mt->jsonl && fclose(mt->jsonl) != 0)
        rc = error_set(err, len, "%s: cannot write: %s", mt->jsonl_path, strerror(errno)) - 1;
    mt->jsonl = NULL;
    return rc;
}
