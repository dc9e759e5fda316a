/* wg-wrap-launcher aftercare (aftercare.c): looks after a profile whose
 * sidecar died. */
#ifndef WG_WRAP_AFTERCARE_H
#define WG_WRAP_AFTERCARE_H

#include <sys/types.h>

void cmd_aftercare(int argc, char *argv[]) __attribute__((noreturn));

/* What pid's standard error refers to, opened anew through /proc/PID/fd/2
 * for appending (a program's `2>>log` is added to, not overwritten), not
 * blocking; -1 with errno when it cannot be. */
int aftercare_reopen_stderr(pid_t pid);

#endif
