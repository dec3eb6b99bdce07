// info.h: `pcmoe info PATH`: what a checkpoint holds, validated.
#ifndef PCMOE_INFO_H
#define PCMOE_INFO_H

// PATH: a party file (party_R.h5), a checkpoint step directory, or a run directory (its newest complete
// checkpoint). Prints step, mode, parties, parameter counts and memory by category for each party file,
// after loading it fully (every dataset checked). Returns 0, or 2 if anything is missing or invalid.
int info_run(const char *path);

#endif
