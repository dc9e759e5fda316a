/* The aftercare's fallback for telling a program on its standard error
 * (aftercare_reopen_stderr), on its own: a child whose stderr is a file
 * opened for appending (`2>>log`) and already holding text; what the
 * aftercare writes must come after that text, not over it.
 *
 * Built and run by tests/test_launcher.py with the launcher's aftercare.c.
 * Prints the file's content and exits 0, or says what failed and exits 1. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aftercare.h"

int
main(int argc, char *argv[])
{
  static const char before[] = "the program's own line\n";
  static const char notice[] = "the notice\n";
  char got[256];
  int log, fd, ready[2];
  ssize_t n;
  pid_t child;
  char c;

  if (argc != 2)
    return 2;
  log = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (log < 0 || write(log, before, strlen(before)) < 0)
    return perror("the log"), 1;
  close(log);
  if (pipe(ready) < 0)
    return perror("pipe"), 1;
  child = fork();
  if (child == 0) {
    /* as a shell does for `2>>log` */
    int err = open(argv[1], O_WRONLY | O_APPEND);

    dup2(err, 2);
    close(ready[0]);
    if (write(ready[1], "r", 1) < 0)
      _exit(1);
    pause();
    _exit(0);
  }
  close(ready[1]);
  if (read(ready[0], &c, 1) != 1)
    return fprintf(stderr, "the child did not start\n"), 1;
  fd = aftercare_reopen_stderr(child);
  if (fd < 0)
    return perror("aftercare_reopen_stderr"), 1;
  if (write(fd, notice, strlen(notice)) < 0)
    return perror("write"), 1;
  close(fd);
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  log = open(argv[1], O_RDONLY);
  n = read(log, got, sizeof got - 1);
  if (n < 0)
    return perror("read"), 1;
  got[n] = '\0';
  fputs(got, stdout);
  return 0;
}
