// attack.h: `pcmoe attack`: reconstruction attacks by an honest-but-curious expert owner.
#ifndef PCMOE_ATTACK_H
#define PCMOE_ATTACK_H

// pcmoe attack CONFIG --checkpoint DIR --records DIR --attacker A --victim V [--white-box] [--json FILE]
// Returns the process exit status.
int attack_main(int argc, char **argv);

#endif
