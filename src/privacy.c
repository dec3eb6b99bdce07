// privacy.c: clipping and noise of the rows that cross parties, and the Renyi DP accountant (privacy.h).
#include "privacy.h"

#include <math.h>   // sqrt, log, exp, INFINITY

void privacy_clip_noise(float *x, int n, int d, float C, float noise_multiplier, Rng *rng) {
    float std = noise_multiplier * C;
    for (int i = 0; i < n; i++) {
        float *row = x + (size_t)i * d;
        double s = 0.0;
        for (int j = 0; j < d; j++) s += (double)row[j] * row[j];
        double norm = sqrt(s);
        if (norm > C) {
            float scale = (float)(C / norm);
            for (int j = 0; j < d; j++) row[j] *= scale;
        }
        if (std > 0.0f)
            for (int j = 0; j < d; j++) row[j] += std * rng_normal(rng);
    }
}

void privacy_clip_backward(float *g, const float *x, int d, float C) {
    double s = 0.0, xg = 0.0;
    for (int j = 0; j < d; j++) { s += (double)x[j] * x[j]; xg += (double)x[j] * g[j]; }
    double norm = sqrt(s);
    if (norm <= C) return; // the identity
    // y = C x / |x|:  dy/dx = (C / |x|) (I - x x^T / |x|^2), symmetric
    double scale = C / norm, proj = xg / s;
    for (int j = 0; j < d; j++) g[j] = (float)(scale * (g[j] - proj * x[j]));
}

double privacy_rdp_gaussian(double alpha, double z) { return alpha / (2.0 * z * z); }

double privacy_epsilon(const double *orders, const double *rdp, int n, double delta, double *order) {
    double best = INFINITY, best_order = 0.0;
    for (int i = 0; i < n; i++) {
        double a = orders[i];
        double eps = rdp[i] + log((a - 1.0) / a) - (log(delta) + log(a)) / (a - 1.0);
        if (eps < best) { best = eps; best_order = a; }
    }
    if (order) *order = best_order;
    return best < 0.0 ? 0.0 : best;
}

int privacy_appearances(long windows, double p, double tail) {
    if (p >= 1.0) return (int)windows;
    if (p <= 0.0 || windows <= 0) return 0;
    double log_q = log1p(-p), log_ratio = log(p) - log_q;
    double log_pmf = windows * log_q, cdf = 0.0; // P(X = 0)
    for (long k = 0; k < windows; k++) {
        cdf += exp(log_pmf);
        if (1.0 - cdf <= tail) return (int)k;
        log_pmf += log((double)(windows - k) / (k + 1)) + log_ratio; // P(X = k + 1)
    }
    return (int)windows;
}

// The orders the accountant minimises over: near 1 for large epsilon, up to 4096 for large noise.
static const double ORDERS[] = { 1.1, 1.25, 1.5, 1.75, 2,   2.25, 2.5, 3,   3.5,  4,    5,   6,  7,
                                 8,   10,   12,  14,   16,  20,   24,  28,  32,   40,   48,  56, 64,
                                 80,  96,   128, 192,  256, 384,  512, 768, 1024, 2048, 4096 };
#define N_ORDERS (int)(sizeof ORDERS / sizeof ORDERS[0])

double privacy_run_epsilon(double s, long releases, int appearances, double delta_conv) {
    if (appearances == 0 || releases == 0) return 0.0;
    if (s <= 0.0) return INFINITY;
    double rdp[N_ORDERS];
    for (int i = 0; i < N_ORDERS; i++)
        rdp[i] = (double)releases * appearances * privacy_rdp_gaussian(ORDERS[i], s / 2.0);
    return privacy_epsilon(ORDERS, rdp, N_ORDERS, delta_conv, NULL);
}

double privacy_noise_for_epsilon(double target, long releases, int appearances, double delta_conv) {
    double lo = 1e-4, hi = 1e5; // epsilon falls as the noise grows
    if (privacy_run_epsilon(hi, releases, appearances, delta_conv) > target) return INFINITY;
    while (hi / lo > 1.001) {
        double mid = sqrt(lo * hi);
        if (privacy_run_epsilon(mid, releases, appearances, delta_conv) <= target) hi = mid;
        else lo = mid;
    }
    return hi;
}

void privacy_first_nonfinite(long *first, float *value, const float *buf, const int *rows, const int *offs,
                             int count, int d) {
    for (int q = 0; q < count; q++) {
        const float *v = buf + (size_t)offs[q] * d;
        long n = (long)rows[q] * d;
        first[q] = -1;
        value[q] = 0.0f;
        for (long i = 0; i < n; i++)
            if (!(v[i] - v[i] == 0.0f)) { first[q] = i; value[q] = v[i]; break; }
    }
}
