// test_privacy: the DP defence's parts (src/privacy.c) against independent references.
//  - The accountant against published values, the test values of Google's dp_accounting library
//    (rdp_privacy_accountant_test.py): the Gaussian mechanism's Renyi DP alpha / (2 sigma^2); epsilon
//    1.32783806176 at order 32 for a constant RDP of 1.1 over orders 2..32 at delta 1e-5; and noise
//    4.530877117 giving exactly (1, 1e-6)-DP over orders 1.001 .. 99.999.
//  - Soundness and tightness against the exact privacy curve of composed Gaussians (Dong, Roth and Su,
//    "Gaussian Differential Privacy", 2019, Cor. 2.13: n releases at noise / sensitivity z are mu-GDP with
//    mu = sqrt(n) / z, and delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)): the accountant's
//    epsilon always holds (the exact delta there is <= delta) and is within 15% of the exact epsilon (where
//    that is below 100).
//  - The binomial tail of appearances against a direct sum of the binomial's upper tail (lgamma).
//  - The noise chosen for a target epsilon reaches it, and 1% less noise would not.
//  - Clipping: rows end at norm <= C, rows already within C are untouched; the noise's mean, std and
//    kurtosis; the clipping's backward against central finite differences.
#include <math.h>   // sqrt, erfc, exp, lgamma
#include <stdio.h>  // printf
#include <stdlib.h> // malloc

#include "privacy.h"

static int failures = 0;
static void check(int ok, const char *what) {
    printf("%s: %s\n", ok ? "ok" : "FAIL", what);
    failures += !ok;
}

static double phi(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }
// exact delta of mu-GDP at eps
static double gdp_delta(double mu, double eps) { return phi(-eps / mu + mu / 2) - exp(eps) * phi(-eps / mu - mu / 2); }
static double gdp_epsilon(double mu, double delta) {
    double lo = 0.0, hi = 1e4;
    for (int i = 0; i < 200; i++) { double mid = 0.5 * (lo + hi); if (gdp_delta(mu, mid) > delta) lo = mid; else hi = mid; }
    return hi;
}

// P(X > a) for X ~ Binomial(n, p), summed from the top
static double binomial_upper(long n, double p, long a) {
    double s = 0.0;
    for (long k = n; k > a; k--)
        s += exp(lgamma(n + 1.0) - lgamma(k + 1.0) - lgamma(n - k + 1.0) + k * log(p) + (n - k) * log1p(-p));
    return s;
}

int main(void) {
    char what[256];
    // 1. published values
    double r = privacy_rdp_gaussian(3.14159, 2.71828);
    snprintf(what, sizeof what, "Gaussian RDP at order 3.14159, sigma 2.71828: %.10f = alpha / (2 sigma^2)", r);
    check(fabs(r - 3.14159 / (2 * 2.71828 * 2.71828)) < 1e-12, what);
    double orders[31], rdp[31], order;
    for (int i = 0; i < 31; i++) { orders[i] = 2 + i; rdp[i] = 1.1; }
    double eps = privacy_epsilon(orders, rdp, 31, 1e-5, &order);
    snprintf(what, sizeof what, "constant RDP 1.1 over orders 2..32 at delta 1e-5: epsilon %.11f at order %g (published 1.32783806176 at 32)", eps, order);
    check(fabs(eps - 1.32783806176) < 1e-9 && order == 32, what);
    int n = 98999;
    double *o = malloc(sizeof(double) * n), *rr = malloc(sizeof(double) * n);
    for (int i = 0; i < n; i++) { o[i] = 0.001 * (i + 1001); rr[i] = privacy_rdp_gaussian(o[i], 4.530877117); }
    eps = privacy_epsilon(o, rr, n, 1e-6, NULL);
    snprintf(what, sizeof what, "Gaussian noise 4.530877117, orders 1.001..99.999, delta 1e-6: epsilon %.8f (published 1)", eps);
    check(fabs(eps - 1.0) < 1e-6, what);
    free(o);
    free(rr);

    // 2. against the exact curve of composed Gaussians (z = noise multiplier / 2: sensitivity 2C, noise s C)
    const double noises[] = {0.5, 1.0, 2.0, 8.0, 30.0};
    const long releases[] = {1, 8, 400};
    int sound = 1, tight = 1;
    double worst = 0.0;
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 3; j++) {
            double e = privacy_run_epsilon(noises[i], releases[j], 1, 1e-5);
            double mu = sqrt((double)releases[j]) / (noises[i] / 2.0), exact = gdp_epsilon(mu, 1e-5);
            if (exact > 100) continue; // (no meaning there, and e^eps overflows the reference past 709)
            if (gdp_delta(mu, e) > 1e-5 * (1 + 1e-9)) sound = 0;
            if (e > 1.15 * exact) tight = 0;
            if (exact > 0 && e / exact > worst) worst = e / exact;
        }
    check(sound, "the accountant's epsilon holds against the exact composed-Gaussian curve at every setting");
    snprintf(what, sizeof what, "and is within 15%% of the exact epsilon (worst ratio %.3f)", worst);
    check(tight, what);
    check(privacy_run_epsilon(0.0, 8, 1, 1e-5) == INFINITY && privacy_run_epsilon(1.0, 8, 0, 1e-5) == 0.0, "no noise: infinite epsilon; no appearance: 0");

    // 3. appearances: the binomial tail
    int ok = 1;
    const long windows[] = {10, 4800, 200000};
    const double ps[] = {0.3, 1e-4, 2e-4};
    for (int i = 0; i < 3; i++) {
        int a = privacy_appearances(windows[i], ps[i], 5e-6);
        double at = binomial_upper(windows[i], ps[i], a), before = a > 0 ? binomial_upper(windows[i], ps[i], a - 1) : 1.0;
        if (!(at <= 5e-6 * (1 + 1e-6) && before > 5e-6 * (1 - 1e-6))) ok = 0;
        printf("  %ld windows, p %g: a byte in more than %d with probability %.3g (more than %d: %.3g)\n", windows[i], ps[i], a, at, a - 1, before);
    }
    check(ok, "appearances: the smallest A with P(X > A) <= tail");

    // 4. the noise for a target epsilon
    double s = privacy_noise_for_epsilon(3.0, 8, 5, 5e-6);
    double e_at = privacy_run_epsilon(s, 8, 5, 5e-6), e_less = privacy_run_epsilon(0.99 * s, 8, 5, 5e-6);
    snprintf(what, sizeof what, "target epsilon 3: noise multiplier %.4f gives %.4f, 1%% less noise %.4f", s, e_at, e_less);
    check(e_at <= 3.0 && e_less > 3.0, what);

    // 5. clipping and noise
    enum { D = 32, ROWS = 20000 };
    Rng rng;
    rng_seed(&rng, 7);
    float *x = malloc(sizeof(float) * D * ROWS), *keep = malloc(sizeof(float) * D * ROWS);
    for (int i = 0; i < D * ROWS; i++) x[i] = keep[i] = (i / D) % 2 ? 0.05f * rng_normal(&rng) : 3.0f * rng_normal(&rng);
    privacy_clip_noise(x, ROWS, D, 1.0f, 0.0f, &rng);
    int clipped_ok = 1, untouched_ok = 1;
    for (int i = 0; i < ROWS; i++) {
        double nx = 0.0, nk = 0.0;
        for (int j = 0; j < D; j++) { nx += (double)x[i * D + j] * x[i * D + j]; nk += (double)keep[i * D + j] * keep[i * D + j]; }
        if (sqrt(nx) > 1.0 + 1e-5) clipped_ok = 0;
        if (sqrt(nk) > 1.0 && fabs(sqrt(nx) - 1.0) > 1e-5) clipped_ok = 0;
        if (sqrt(nk) <= 1.0) for (int j = 0; j < D; j++) if (x[i * D + j] != keep[i * D + j]) untouched_ok = 0;
    }
    check(clipped_ok, "clipping: every row ends at norm <= C, the longer ones at exactly C");
    check(untouched_ok, "clipping: rows within C are left bit for bit");
    for (int i = 0; i < D * ROWS; i++) x[i] = 0.0f;
    privacy_clip_noise(x, ROWS, D, 0.5f, 3.0f, &rng); // std 1.5
    double m1 = 0, m2 = 0, m4 = 0, N = (double)D * ROWS;
    for (int i = 0; i < D * ROWS; i++) m1 += x[i];
    m1 /= N;
    for (int i = 0; i < D * ROWS; i++) { double z = x[i] - m1; m2 += z * z; m4 += z * z * z * z; }
    m2 /= N;
    m4 /= N;
    double sd = sqrt(m2), kurt = m4 / (m2 * m2);
    snprintf(what, sizeof what, "noise: mean %.4f, std %.4f (want 1.5), kurtosis %.3f (Gaussian: 3), over %.0f draws", m1, sd, kurt, N);
    check(fabs(m1) < 5 * 1.5 / sqrt(N) && fabs(sd - 1.5) < 0.01 * 1.5 && fabs(kurt - 3.0) < 0.05, what);

    // 6. the clipping's backward by central differences (double-checked in float: h = 1e-2)
    double worst_fd = 0.0;
    for (int t = 0; t < 2; t++) {
        float xr[D], g[D], y[D];
        for (int j = 0; j < D; j++) { xr[j] = (t ? 0.03f : 0.8f) * rng_normal(&rng); g[j] = rng_normal(&rng); }
        float gx[D];
        for (int j = 0; j < D; j++) gx[j] = g[j];
        privacy_clip_backward(gx, xr, D, 1.0f); // d (g . clip(x)) / dx
        for (int j = 0; j < D; j++) {
            double f[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                for (int k = 0; k < D; k++) y[k] = xr[k];
                y[j] += sgn ? -1e-2f : 1e-2f;
                privacy_clip_noise(y, 1, D, 1.0f, 0.0f, &rng);
                f[sgn] = 0.0;
                for (int k = 0; k < D; k++) f[sgn] += (double)g[k] * y[k];
            }
            double fd = (f[0] - f[1]) / 2e-2, diff = fabs(fd - gx[j]) / (1.0 + fabs(fd));
            if (diff > worst_fd) worst_fd = diff;
        }
    }
    snprintf(what, sizeof what, "clipping backward = central differences, for a clipped and an unclipped row (worst %.1e)", worst_fd);
    check(worst_fd < 2e-3, what);
    free(x);
    free(keep);
    printf(failures ? "FAIL: %d check(s) failed\n" : "PASS\n", failures);
    return failures ? 1 : 0;
}
