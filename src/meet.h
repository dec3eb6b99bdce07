// meet.h: parties in different places. Each party starts its own job of parties.ranks_per_party ranks, under
// its own scheduler (pcmoe train CONFIG --party P --connect NAME), and the jobs meet through MPI's port
// functions and a name server every job's mpirun is started with (mpirun --ompi-server file:URI; the URI is
// what `ompi-server --report-uri FILE` wrote):
//   party 0 opens a port for each other party and publishes it under NAME:P; party P looks its port up (until
//   parties.peer_timeout), says it is there, and connects; party 0's job accepts them one by one as they come
//   (waiting parties.peer_timeout for each next one), and the parties met so far take part in each next
//   accept. The intercommunicators are merged into one communicator, its ranks
//   ordered by party as one mpirun would start them, which becomes the Comm's world: the exchange, the
//   schedules, checkpoints, the audit and every mode then run as under one mpirun.
// At the meeting every party checks party 0's protocol version and config against its own: the model, the
// parties and every training key they must share (config_diff_shared). A party that came twice, or with
// another ranks_per_party, or a disagreement ends the meeting on every party with one line each, naming the
// key and both values.
#ifndef PCMOE_MEET_H
#define PCMOE_MEET_H

#include "comm.h"   // Comm
#include "config.h" // Config

// The meeting of party `party` (this job) under `name`; on return c->world holds every party's ranks. Any
// failure ends the job (and the meeting's others) with one line.
void meet_parties(Comm *c, const Config *cfg, int party, const char *name);

#endif
