/* wg-wrap-launcher aftercare (aftercare.c): looks after a profile whose
 * sidecar died. */
#ifndef WG_WRAP_AFTERCARE_H
#define WG_WRAP_AFTERCARE_H

void cmd_aftercare(int argc, char *argv[]) __attribute__((noreturn));

#endif
