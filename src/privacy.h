// privacy.h: the differentially private defence of what crosses party boundaries, and its accountant.
//
// The mechanism (privacy.clip_norm, privacy.grad_clip_norm, privacy.noise_multiplier), in the style of
// DP-Forward (Du et al., CCS 2023): every row a party sends to another party is first scaled down to L2
// norm <= C, then gets Gaussian noise of std noise_multiplier * C on every coordinate:
//   forward:  each expert input row (C = clip_norm)
//   backward: each expert output-gradient row (C = grad_clip_norm)
// The backward of the clipping is applied to the input gradient that comes back, so training follows
// the clipped rows' true gradient (the noise is additive: its Jacobian is the identity).
//
// The guarantee: replacing one row changes its clipped value by at most 2C in L2, so one release is the
// Gaussian mechanism with noise / sensitivity z = noise_multiplier / 2, of Renyi DP alpha / (2 z^2) at every
// order alpha (Mironov, "Renyi Differential Privacy", CSF 2017, Prop. 7). The protected unit is one byte
// position of a party's corpus: each time a training window holds it, its row goes to at most top_k
// owners at every MoE layer, and its output gradients come back the same way, so one appearance is at
// most 2 * top_k * (MoE layers) releases, composed by adding their Renyi DP (Mironov, Prop. 1).
// Windows are drawn at random, independently of the data: with probability >= 1 - delta/2 a byte is in
// at most A windows (A from the binomial tail of the party's windows), and the other delta/2 covers the
// rest. The total converts to (epsilon, delta/2) by Canonne, Kamath and Steinke (NeurIPS 2020, Prop. 12),
// also in Balle et al. (AISTATS 2020, Thm. 21), the conversion of Google's dp_accounting:
//   epsilon = min over alpha of  rdp(alpha) + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1)
// Not covered: which experts a row reached and how many rows a party routes (routing is not noised), and
// what other positions' rows reveal of a byte through attention (each row depends on the bytes before it
// in its window).
#ifndef PCMOE_PRIVACY_H
#define PCMOE_PRIVACY_H

#include <stddef.h> // size_t

#include "rng.h"    // Rng

// Scales each of the n rows (n, d) of x to L2 norm <= C (C > 0), then adds N(0, (noise_multiplier C)^2) to
// every element (none when noise_multiplier is 0), drawing from rng.
void privacy_clip_noise(float *x, int n, int d, float C, float noise_multiplier, Rng *rng);
// Backward of the clipping y = x * min(1, C / |x|), one row: g (d) holds d loss / d y on entry and
// d loss / d x on return; x (d) is the row before clipping.
void privacy_clip_backward(float *g, const float *x, int d, float C);
// privacy.check_finite's scan of rows received from peers: block q is rows[q] rows of d at row offs[q] of buf
// (host memory); first[q] = the index in block q of its first NaN or Inf (-1: none), value[q] that value.
void privacy_first_nonfinite(long *first, float *value, const float *buf, const int *rows, const int *offs,
                             int count, int d);

// Renyi DP at order alpha > 1 of the Gaussian mechanism with noise std / L2 sensitivity = z: alpha / (2 z^2).
double privacy_rdp_gaussian(double alpha, double z);
// The (epsilon, delta) of a mechanism with Renyi DP rdp[i] at orders[i] (n of them, each > 1), by the
// conversion above; *order (may be NULL) gets the minimising order.
double privacy_epsilon(const double *orders, const double *rdp, int n, double delta, double *order);
// The fewest appearances A such that a byte lies in more than A of `windows` random windows, each
// holding it with probability p, with probability at most tail (binomial upper tail).
int privacy_appearances(long windows, double p, double tail);
// epsilon of the mechanism above for a byte seen in up to `appearances` windows, each sending at most
// `releases` rows (2 * top_k * MoE layers), noise multiplier s (its z = s / 2), at delta_conv (the share of
// delta left to the conversion), over the accountant's orders. Infinite when s is 0.
double privacy_run_epsilon(double s, long releases, int appearances, double delta_conv);
// The smallest noise multiplier with privacy_run_epsilon(...) <= target (to 0.1%).
double privacy_noise_for_epsilon(double target, long releases, int appearances, double delta_conv);

#endif
