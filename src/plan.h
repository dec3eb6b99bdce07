// plan.h: `pcmoe plan CONFIG [--set ...] [--json OUT]`: per process (each party, or the centralized run) the
// bytes of parameters, gradients, AdamW state, activations and exchange buffers, without allocating them.
#ifndef PCMOE_PLAN_H
#define PCMOE_PLAN_H

// The command (argv[1] is "plan"). Returns the exit status: 0, or 2 for a bad command line or config.
int plan_main(int argc, char **argv);

#endif
