/* wg-wrap-launcher aftercare: looks after a profile whose sidecar died.
 *
 * wg-wrap starts it on the host next to each sidecar, detached, holding the
 * read end of a pipe whose write end only the sidecar holds.  A sidecar that
 * ends on purpose writes CLEAN_MARK first, and this process leaves.  One that
 * dies (SIGKILL, a crash) closes the pipe without it: then every program
 * left in its network namespace is told once, on its own standard error,
 * that it has no network (it keeps running: a sidecar's death never lets it
 * out, and a new sidecar can be started among the programs), and once the
 * last of them has left, the profile's runtime directory is removed, under
 * wg-wrap's lock, unless a new sidecar took the profile over meanwhile.
 *
 * It is C, not the sidecar's Go, because it is resident for as long as the
 * profile runs: a few pages, where a Go process costs megabytes.
 */

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "aftercare.h"

#define CLEAN_MARK 'x'
#define BURY_INTERVAL_NS (200 * 1000 * 1000)
#define MAX_TOLD 256 /* distinct standard errors told; more are told twice at worst */
#define WRITABLE_WAIT_MS 1000

struct aftercare {
  pid_t pid;                 /* the sidecar, as its state.toml records it */
  unsigned long long netns;  /* its network namespace's inode */
  const char *profile_dir;
  const char *config;        /* NULL: not named in the message */
  int life_fd;
};

static void
warn_errno(const char *step)
{
  fprintf(stderr, "wg-wrap-launcher aftercare: %s: %s\n", step, strerror(errno));
}

/* ---- who is inside -------------------------------------------------------- */

/* Whether /proc/NAME is a process in network namespace netns (not us). */
static int
is_member(const char *name, unsigned long long netns)
{
  char path[64];
  struct stat st;

  if (name[0] < '1' || name[0] > '9' || strspn(name, "0123456789") != strlen(name))
    return 0;
  if (atoi(name) == getpid())
    return 0;
  snprintf(path, sizeof path, "/proc/%s/ns/net", name);
  /* Another user's process cannot be looked at: it is not a member. */
  return stat(path, &st) == 0 && (unsigned long long)st.st_ino == netns;
}

/* Calls tell(pid) for each member, returns how many there are (-1: /proc
 * could not be read). */
static int
for_each_member(unsigned long long netns, void (*tell)(pid_t, void *), void *arg)
{
  DIR *proc = opendir("/proc");
  struct dirent *entry;
  int count = 0;

  if (proc == NULL)
    return -1;
  while ((entry = readdir(proc)) != NULL) {
    if (!is_member(entry->d_name, netns))
      continue;
    count++;
    if (tell != NULL)
      tell((pid_t)atoi(entry->d_name), arg);
  }
  closedir(proc);
  return count;
}

/* ---- telling them ----------------------------------------------------------- */

struct telling {
  const char *message;
  struct { dev_t dev; ino_t ino; dev_t rdev; } told[MAX_TOLD];
  int n_told;
};

int
aftercare_reopen_stderr(pid_t pid)
{
  char path[64];

  snprintf(path, sizeof path, "/proc/%d/fd/2", (int)pid);
  return open(path, O_WRONLY | O_APPEND | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
}

/* A descriptor for what pid's fd 2 refers to: a copy of the descriptor
 * itself (pidfd_getfd: no permission on the file needed, as for a pipe
 * another user made), or, where the kernel refuses that (Yama's
 * ptrace_scope, a kernel before 5.6), the file opened anew. */
static int
stderr_of(pid_t pid)
{
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);

  if (pidfd >= 0) {
    int fd = (int)syscall(SYS_pidfd_getfd, pidfd, 2, 0);

    close(pidfd);
    if (fd >= 0)
      return fd;
  }
  return aftercare_reopen_stderr(pid);
}

/* Once per distinct standard error (a terminal shared by a shell and its
 * jobs is told once), when there is room to write within a second: a copied
 * descriptor shares the program's blocking mode, and a full pipe nobody
 * reads must not hold us up.  The message is shorter than PIPE_BUF. */
static void
tell_one(pid_t pid, void *arg)
{
  struct telling *t = arg;
  struct pollfd out;
  struct stat st;
  int fd = stderr_of(pid);

  if (fd < 0)
    return; /* gone, closed, a socket, or not ours */
  if (fstat(fd, &st) == 0) {
    int seen = 0;

    for (int i = 0; i < t->n_told && !seen; i++)
      seen = t->told[i].dev == st.st_dev && t->told[i].ino == st.st_ino &&
             t->told[i].rdev == st.st_rdev;
    out.fd = fd;
    out.events = POLLOUT;
    if (!seen && poll(&out, 1, WRITABLE_WAIT_MS) == 1 && (out.revents & POLLOUT)) {
      if (write(fd, t->message, strlen(t->message)) < 0) {
        /* nothing to do: it is going, or its stderr is */
      }
      if (t->n_told < MAX_TOLD) {
        t->told[t->n_told].dev = st.st_dev;
        t->told[t->n_told].ino = st.st_ino;
        t->told[t->n_told].rdev = st.st_rdev;
        t->n_told++;
      }
    }
  }
  close(fd);
}

/* s, quoted for a shell when it needs it (as Python's shlex.quote). */
static void
shell_quote(char *out, size_t size, const char *s)
{
  static const char safe[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                             "0123456789@%+=:,./-_";
  size_t n = 0;

  if (s[0] != '\0' && strspn(s, safe) == strlen(s)) {
    snprintf(out, size, "%s", s);
    return;
  }
  out[n++] = '\'';
  for (; *s != '\0' && n + 6 < size; s++) {
    if (*s == '\'') {
      memcpy(out + n, "'\"'\"'", 5);
      n += 5;
    } else {
      out[n++] = *s;
    }
  }
  out[n++] = '\'';
  out[n] = '\0';
}

static void
tell_members(const struct aftercare *a)
{
  static struct telling t;
  const char *slash = strrchr(a->profile_dir, '/');
  const char *name = slash != NULL ? slash + 1 : a->profile_dir;
  char message[PATH_MAX + 512], config[PATH_MAX + 64] = "";

  if (a->config != NULL) {
    char quoted[PATH_MAX + 32];

    shell_quote(quoted, sizeof quoted, a->config);
    snprintf(config, sizeof config, " -c %s", quoted);
  }
  snprintf(message, sizeof message,
           "\nwg-wrap: the tunnel of profile %s is down: its sidecar (pid %d) ended "
           "unexpectedly. Programs in it have no network (nothing leaves in clear) until "
           "`wg-wrap up -n %s%s` brings the tunnel back, in place.\n",
           name, (int)a->pid, name, config);
  t.message = message;
  if (for_each_member(a->netns, tell_one, &t) < 0)
    warn_errno("listing processes");
}

/* ---- burying the profile ---------------------------------------------------- */

/* The sidecar pid state.toml records (wg-wrap writes `sidecar_pid = N`);
 * 0 when there is none. */
static pid_t
recorded_pid(int dir)
{
  char line[256];
  long pid = 0;
  int fd = openat(dir, "state.toml", O_RDONLY | O_CLOEXEC);
  FILE *f;

  if (fd < 0)
    return 0;
  f = fdopen(fd, "r");
  if (f == NULL) {
    close(fd);
    return 0;
  }
  while (fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, "sidecar_pid = ", 14) == 0)
      pid = strtol(line + 14, NULL, 10);
  }
  fclose(f);
  return (pid_t)pid;
}

/* Remove the profile's directory (its files are plain) from base. */
static int
remove_profile(int base, const char *name)
{
  int dir = openat(base, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  struct dirent *entry;
  DIR *d;

  if (dir < 0)
    return errno == ENOENT ? 0 : -1;
  d = fdopendir(dir);
  if (d == NULL) {
    close(dir);
    return -1;
  }
  while ((entry = readdir(d)) != NULL) {
    if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0)
      unlinkat(dirfd(d), entry->d_name, 0);
  }
  closedir(d);
  return unlinkat(base, name, AT_REMOVEDIR);
}

/* One look: 1 when the aftercare is done (the profile removed, or taken
 * over by a new sidecar, or gone), 0 to look again later. */
static int
bury_if_empty(const struct aftercare *a, int base, const char *name)
{
  int profile, done = 0, members;

  /* Never waits for wg-wrap's lock: it looks again at the next tick. */
  if (flock(base, LOCK_EX | LOCK_NB) < 0) {
    if (errno != EWOULDBLOCK)
      warn_errno("locking the runtime directory");
    return 0;
  }
  profile = openat(base, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (profile < 0 || recorded_pid(profile) != a->pid) {
    done = 1; /* removed, or a new sidecar took the profile over */
  } else {
    members = for_each_member(a->netns, NULL, NULL);
    if (members == 0) {
      if (remove_profile(base, name) < 0)
        warn_errno("removing the profile's directory");
      done = 1;
    }
  }
  if (profile >= 0)
    close(profile);
  flock(base, LOCK_UN);
  return done;
}

static void
bury(const struct aftercare *a)
{
  char base_path[PATH_MAX];
  const char *slash = strrchr(a->profile_dir, '/');
  struct timespec interval = { 0, BURY_INTERVAL_NS };
  int base;

  if (slash == NULL || slash == a->profile_dir || (size_t)(slash - a->profile_dir) >= sizeof base_path)
    return;
  memcpy(base_path, a->profile_dir, (size_t)(slash - a->profile_dir));
  base_path[slash - a->profile_dir] = '\0';
  base = open(base_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (base < 0)
    return; /* the runtime directory is gone: nothing to remove */
  while (!bury_if_empty(a, base, slash + 1))
    nanosleep(&interval, NULL);
  close(base);
}

/* ---- the command ------------------------------------------------------------ */

/* Whether wg-wrap stopped the sidecar on purpose (`down`: it makes the file
 * `stopping` before its SIGTERM, and a SIGKILL after the grace is no crash). */
static int
stopped_on_purpose(const struct aftercare *a)
{
  char path[PATH_MAX];

  snprintf(path, sizeof path, "%s/stopping", a->profile_dir);
  return faccessat(AT_FDCWD, path, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Blocks until the life pipe ends; 1 when the sidecar died (end of file
 * without the mark), 0 when it ended on purpose. */
static int
sidecar_died(int life_fd)
{
  char c;

  for (;;) {
    ssize_t n = read(life_fd, &c, 1);

    if (n == 1)
      return c != CLEAN_MARK;
    if (n == 0 || errno != EINTR)
      return 1;
  }
}

static void __attribute__((noreturn))
aftercare_usage(const char *problem)
{
  fprintf(stderr, "wg-wrap-launcher: aftercare: %s (usage: aftercare --pid PID --netns INO "
          "--profile-dir DIR --life-fd FD [--config FILE])\n", problem);
  exit(125);
}

static long long
number(const char *text, const char *option)
{
  char *end;
  long long n;

  errno = 0;
  n = strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || n <= 0)
    aftercare_usage(option);
  return n;
}

void
cmd_aftercare(int argc, char *argv[])
{
  struct aftercare a = { 0, 0, NULL, NULL, -1 };

  for (int i = 0; i < argc; i += 2) {
    const char *option = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;

    if (value == NULL || value[0] == '\0')
      aftercare_usage("an option without its value");
    if (strcmp(option, "--pid") == 0)
      a.pid = (pid_t)number(value, "--pid needs a process id");
    else if (strcmp(option, "--netns") == 0)
      a.netns = (unsigned long long)number(value, "--netns needs an inode number");
    else if (strcmp(option, "--profile-dir") == 0)
      a.profile_dir = value;
    else if (strcmp(option, "--life-fd") == 0)
      a.life_fd = (int)number(value, "--life-fd needs a file descriptor");
    else if (strcmp(option, "--config") == 0)
      a.config = value;
    else
      aftercare_usage("unknown option");
  }
  if (a.pid == 0 || a.netns == 0 || a.profile_dir == NULL || a.life_fd <= 2)
    aftercare_usage("missing option");
  if (fcntl(a.life_fd, F_SETFD, FD_CLOEXEC) < 0)
    aftercare_usage("--life-fd is not open");
  signal(SIGHUP, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  if (!sidecar_died(a.life_fd) || stopped_on_purpose(&a))
    exit(0);
  tell_members(&a);
  bury(&a);
  exit(0);
}
