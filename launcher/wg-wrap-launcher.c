/* wg-wrap-launcher: the only part of wg-wrap that creates or joins namespaces.
 *
 * unshare(CLONE_NEWUSER) and setns() into a user namespace fail with EINVAL
 * in a multi-threaded process, and neither the Go sidecar nor the Python
 * orchestrator can promise to be single-threaded.  So this small program does
 * the namespace system calls and then execs in place: what it runs keeps the
 * launcher's pid and every fd it was given.
 *
 *   create: new user + mount + net namespaces, the caller's uid/gid mapped to
 *           themselves, then the sidecar with CAP_NET_ADMIN and CAP_SYS_ADMIN
 *           (in those namespaces only) as ambient capabilities.
 *   enter:  the same in the namespaces of a program left inside a profile
 *           whose sidecar died (through a pidfd): a new sidecar among them.
 *   join:   enter a profile's namespaces (through the sidecar's pidfd),
 *           restore the working directory, drop every capability, and run
 *           the user's program.
 *   aftercare: on the host, look after a profile whose sidecar dies
 *           (aftercare.c); no namespace, no capability.
 *
 * create and enter run one program only: the wg-wrap-sidecar installed beside
 * this launcher, with an environment of nothing but its WG_WRAP_* variables.
 * A launcher that may create user namespaces where others may not (Ubuntu's
 * AppArmor restriction) must not be a way to run anything else with
 * capabilities in them.  join and enter check, after setns, that they are in
 * the namespaces the caller named (their inode numbers) and that the user
 * namespace is a child of the caller's: a namespace a program made inside a
 * profile is never a way in.
 *
 * All three set no_new_privs before exec: nothing they start can gain privileges
 * by executing a setuid or file-capability program.
 *
 * Exit status: 125 for the launcher's own failures (usage included), 126 when
 * the program cannot be executed, 127 when it does not exist, like a shell.
 * Only libc: capget/capset go through syscall(2).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "aftercare.h"

#ifndef NS_GET_PARENT
#define NS_GET_PARENT 0xb702 /* _IO(0xb7, 0x2), <linux/nsfs.h> */
#endif

#ifndef WG_WRAP_VERSION
#define WG_WRAP_VERSION "0.1.0"
#endif

#define PROG_NAME "wg-wrap-launcher"

enum {
  EXIT_LAUNCHER_FAILED = 125,
  EXIT_CANNOT_EXECUTE = 126,
  EXIT_NOT_FOUND = 127,
};

#define SIDECAR_NAME "wg-wrap-sidecar"
/* The environment the sidecar gets: its own variables, nothing else (no
 * LD_*, GODEBUG, GOMAXPROCS, … chosen by whoever runs the launcher). */
#define SIDECAR_ENV_PREFIX "WG_WRAP_"

static const char usage_text[] =
  "Usage: " PROG_NAME " [--expect-version V] create -- [SIDECAR-ARG]...\n"
  "       " PROG_NAME " [--expect-version V] enter NAMESPACES -- [SIDECAR-ARG]...\n"
  "       " PROG_NAME " [--expect-version V] join NAMESPACES [--cwd DIR] -- PROGRAM [ARG]...\n"
  "       " PROG_NAME " [--expect-version V] aftercare --pid PID --netns INO --profile-dir DIR\n"
  "                        --life-fd FD [--config FILE]\n"
  "       " PROG_NAME " --version | --help\n"
  "\n"
  "--expect-version V, before the command, refuses to run unless V is the\n"
  "launcher's own version (wg-wrap passes its version: a stale helper left\n"
  "behind by an upgrade must fail, not half work).\n"
  "\n"
  "create: unshare user, mount and network namespaces, map the caller's uid and\n"
  "gid to themselves, then execute " SIDECAR_NAME " (the one installed beside\n"
  "this launcher, nothing else) with the SIDECAR-ARGs, CAP_NET_ADMIN and\n"
  "CAP_SYS_ADMIN (only) as ambient capabilities, and only the WG_WRAP_*\n"
  "variables of the environment.\n"
  "\n"
  "enter: like create, in the namespaces NAMESPACES name instead of new ones:\n"
  "a new sidecar for namespaces whose sidecar died while programs were still\n"
  "in them.\n"
  "\n"
  "join: enter the namespaces NAMESPACES name, change to the caller's working\n"
  "directory (or DIR), drop every capability and execute PROGRAM.\n"
  "\n"
  "aftercare: wait until the sidecar PID (network namespace INO) ends; if it\n"
  "died (its life pipe FD closed without a word), tell the programs left in its\n"
  "namespace, and remove the profile DIR once they are gone.\n"
  "\n"
  "NAMESPACES: --pidfd N --userns INO --netns INO --mntns INO: the user,\n"
  "network and mount namespaces of the process whose pidfd N is inherited,\n"
  "which must be those inode numbers, and whose user namespace must be a child\n"
  "of the caller's (checked after entering them).\n"
  "\n"
  "All three set no_new_privs: setuid bits and file capabilities give what\n"
  "they run nothing. Each value is one argument, never '--'; an option given\n"
  "twice is an error. File descriptors are passed on unchanged.\n"
  "\n"
  "Exit status: the program's status; 125 if the launcher fails or is used\n"
  "wrongly (one line on stderr names the failed step); 126 if the program\n"
  "cannot be executed; 127 if it is not found.\n";

enum { NS_USER, NS_NET, NS_MNT, NS_COUNT };

static const char *const ns_names[NS_COUNT] = { "user", "net", "mnt" };

struct join_args {
  int pidfd; /* -1 until --pidfd */
  unsigned long long ino[NS_COUNT]; /* 0 until given */
  const char *cwd; /* NULL: the launcher's own working directory */
};

/* ---- errors ---------------------------------------------------------- */

static void vwarn_line(const char *format, va_list args, int errsv)
  __attribute__((format(printf, 1, 0)));

static void
vwarn_line(const char *format, va_list args, int errsv)
{
  fputs(PROG_NAME ": ", stderr);
  vfprintf(stderr, format, args);
  if (errsv != 0)
    fprintf(stderr, ": %s", strerror(errsv));
  fputc('\n', stderr);
}

static void die_with_error(const char *format, ...)
  __attribute__((format(printf, 1, 2), noreturn));

/* "<step>: <strerror(errno)>", exit 125. */
static void
die_with_error(const char *format, ...)
{
  int errsv = errno;
  va_list args;

  va_start(args, format);
  vwarn_line(format, args, errsv);
  va_end(args);
  exit(EXIT_LAUNCHER_FAILED);
}

static void die_usage(const char *format, ...)
  __attribute__((format(printf, 1, 2), noreturn));

/* One line, exit 125 too: the caller is a program, it only needs to know
 * that the launcher failed before running anything. */
static void
die_usage(const char *format, ...)
{
  va_list args;

  fputs(PROG_NAME ": ", stderr);
  va_start(args, format);
  vfprintf(stderr, format, args);
  va_end(args);
  fputs(" (see --help)\n", stderr);
  exit(EXIT_LAUNCHER_FAILED);
}

/* ---- small helpers: return -1 with errno set ------------------------- */

static int
write_file(const char *path, const char *content)
{
  size_t len = strlen(content);
  ssize_t written;
  int fd, errsv;

  fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  /* proc files take the whole map in one write(2) or reject it. */
  written = write(fd, content, len);
  errsv = errno;
  close(fd);
  if (written < 0) {
    errno = errsv;
    return -1;
  }
  if ((size_t)written != len) {
    errno = EIO;
    return -1;
  }
  return 0;
}

static int
read_int_file(const char *path, long *value)
{
  char buf[32], *end;
  ssize_t n;
  int fd, errsv;

  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  n = read(fd, buf, sizeof buf - 1);
  errsv = errno;
  close(fd);
  if (n < 0) {
    errno = errsv;
    return -1;
  }
  buf[n] = '\0';
  errno = 0;
  *value = strtol(buf, &end, 10);
  if (errno != 0 || end == buf || (*end != '\n' && *end != '\0')) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

/* A decimal number in [min, INT_MAX]; -1 with errno EINVAL otherwise. */
static int
parse_int(const char *text, int min, int *value)
{
  char *end;
  long n;

  errno = 0;
  n = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || n < min || n > INT_MAX) {
    errno = EINVAL;
    return -1;
  }
  *value = (int)n;
  return 0;
}

/* ---- capabilities ---------------------------------------------------- */

static int
capget_all(struct __user_cap_data_struct data[2])
{
  struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };

  return (int)syscall(SYS_capget, &header, data);
}

static int
capset_all(struct __user_cap_data_struct data[2])
{
  struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };

  return (int)syscall(SYS_capset, &header, data);
}

/* The capabilities the sidecar keeps, in the namespaces it is in: a TUN
 * device and its configuration (CAP_NET_ADMIN), and the mounts that make
 * the namespace's view of /etc and /run (CAP_SYS_ADMIN). */
#define SIDECAR_CAPS ((1ULL << CAP_NET_ADMIN) | (1ULL << CAP_SYS_ADMIN))

/* Drop every capability not in `keep` from the bounding set, so that a
 * caller running as uid 0 gets no more than that either. */
static void
drop_bounding_set(unsigned long long keep)
{
  long last_cap;

  if (read_int_file("/proc/sys/kernel/cap_last_cap", &last_cap) < 0)
    die_with_error("reading /proc/sys/kernel/cap_last_cap");
  for (long cap = 0; cap <= last_cap && cap < 64; cap++) {
    if (!(keep & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
      die_with_error("dropping capability %ld from the bounding set", cap);
  }
}

/* After execve as a non-zero uid the sidecar has exactly SIDECAR_CAPS (in
 * its user namespace) in its permitted, effective and ambient sets: an
 * ambient capability survives execve of an ordinary file, the others are
 * dropped by execve itself. */
static void
keep_only_sidecar_caps(void)
{
  struct __user_cap_data_struct data[2];

  if (capget_all(data) < 0)
    die_with_error("reading capabilities");
  /* Ambient capabilities must be both permitted and inheritable. */
  data[0].inheritable = (uint32_t)SIDECAR_CAPS;
  data[1].inheritable = (uint32_t)(SIDECAR_CAPS >> 32);
  if (capset_all(data) < 0)
    die_with_error("setting inheritable capabilities");
  drop_bounding_set(SIDECAR_CAPS);
  for (int cap = 0; cap < 64; cap++) {
    if ((SIDECAR_CAPS & (1ULL << cap)) &&
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
      die_with_error("raising ambient capability %d", cap);
  }
}

/* No capability at all: ambient cleared, every other set empty.  The
 * bounding set is left as it is, on purpose: with no_new_privs execve grants
 * nothing anyway, while an empty bounding set makes the kernel refuse to
 * start any binary with file capabilities (ping's cap_net_raw=ep: its forced
 * capabilities could not be granted), which must run here as it would
 * without them. */
static void
drop_all_capabilities(void)
{
  struct __user_cap_data_struct data[2];

  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
    die_with_error("clearing ambient capabilities");
  memset(data, 0, sizeof data);
  if (capset_all(data) < 0)
    die_with_error("clearing capabilities");
}

/* no_new_privs, as bubblewrap always sets it: execve of a setuid, setgid or
 * file-capability program then grants nothing, and no LSM may move the
 * program to a more privileged domain.  It keeps the sidecar's ambient
 * capabilities: the kernel strips on execve only what would exceed the
 * permitted set held before it, and an ambient capability is already
 * permitted. */
static void
set_no_new_privs(void)
{
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    die_with_error("setting no_new_privs");
}

/* ---- exec ------------------------------------------------------------ */

/* Whether PROGRAM (no '/') names an existing file in one of $PATH's
 * directories, as execvp would search them. */
static int
found_in_path(const char *program)
{
  const char *path = getenv("PATH");
  char candidate[PATH_MAX];
  struct stat st;

  if (path == NULL)
    path = "/bin:/usr/bin"; /* glibc's default for execvp */
  for (const char *dir = path;; dir++) {
    const char *end = strchrnul(dir, ':');
    int len = (int)(end - dir);
    int n;

    if (len == 0) /* an empty entry means the working directory */
      n = snprintf(candidate, sizeof candidate, "./%s", program);
    else
      n = snprintf(candidate, sizeof candidate, "%.*s/%s", len, dir, program);
    if (n < (int)sizeof candidate && stat(candidate, &st) == 0)
      return 1;
    if (*end == '\0')
      return 0;
    dir = end;
  }
}

static void __attribute__((noreturn))
exec_program(char *const argv[])
{
  int errsv;

  execvp(argv[0], argv);
  errsv = errno;
  /* execvp reports EACCES when some directory of $PATH cannot be searched
   * (say /root/bin), even if PROGRAM is in none of them: a shell calls that
   * "not found", and so do we. */
  if (errsv == EACCES && strchr(argv[0], '/') == NULL && !found_in_path(argv[0]))
    errsv = ENOENT;
  fprintf(stderr, PROG_NAME ": executing %s: %s\n", argv[0], strerror(errsv));
  exit(errsv == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE);
}

/* ---- the sidecar ---------------------------------------------------- */

/* The sidecar installed beside this launcher: the one program create and
 * enter run.  A copy of the launcher elsewhere runs the sidecar beside the
 * copy, but gets nothing a plain program could not have: no AppArmor
 * profile names it. */
static char *
sidecar_path(void)
{
  char self[PATH_MAX], *path, *slash;
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);

  if (n < 0)
    die_with_error("reading /proc/self/exe");
  if ((size_t)n >= sizeof self - 1) {
    errno = ENAMETOOLONG;
    die_with_error("reading /proc/self/exe");
  }
  self[n] = '\0';
  slash = strrchr(self, '/');
  if (slash == NULL) {
    errno = EINVAL;
    die_with_error("finding the launcher's directory in %s", self);
  }
  *slash = '\0';
  if (asprintf(&path, "%s/" SIDECAR_NAME, self) < 0)
    die_with_error("allocating memory");
  return path;
}

static void __attribute__((noreturn))
exec_sidecar(char *args[], int n_args)
{
  extern char **environ;
  char **argv = calloc((size_t)n_args + 2, sizeof *argv);
  char **envp;
  int n_env = 0, kept = 0;

  if (argv == NULL)
    die_with_error("allocating memory");
  argv[0] = sidecar_path();
  memcpy(&argv[1], args, (size_t)n_args * sizeof *argv);
  while (environ[n_env] != NULL)
    n_env++;
  envp = calloc((size_t)n_env + 1, sizeof *envp);
  if (envp == NULL)
    die_with_error("allocating memory");
  for (int i = 0; i < n_env; i++) {
    if (strncmp(environ[i], SIDECAR_ENV_PREFIX, strlen(SIDECAR_ENV_PREFIX)) == 0)
      envp[kept++] = environ[i];
  }
  execve(argv[0], argv, envp);
  fprintf(stderr, PROG_NAME ": executing %s: %s\n", argv[0], strerror(errno));
  exit(errno == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE);
}

/* ---- create ---------------------------------------------------------- */

static void
write_id_maps(uid_t uid, gid_t gid)
{
  char map[64];

  /* CVE-2014-8989: an unprivileged process may only write gid_map once
   * setgroups(2) is denied, or it could drop supplementary groups that
   * deny it access (negative group permissions). */
  if (write_file("/proc/self/setgroups", "deny") < 0)
    die_with_error("denying setgroups");
  snprintf(map, sizeof map, "%lu %lu 1\n", (unsigned long)uid, (unsigned long)uid);
  if (write_file("/proc/self/uid_map", map) < 0)
    die_with_error("setting up uid map");
  snprintf(map, sizeof map, "%lu %lu 1\n", (unsigned long)gid, (unsigned long)gid);
  if (write_file("/proc/self/gid_map", map) < 0)
    die_with_error("setting up gid map");
}

/* The arguments after "--", which must come first: create takes no options. */
static int
args_index(int argc, char *argv[], int i, const char *command)
{
  if (i >= argc || strcmp(argv[i], "--") != 0) {
    if (i < argc)
      die_usage("%s: unknown option '%s'", command, argv[i]);
    die_usage("%s: missing '--'", command);
  }
  return i + 1;
}

static void __attribute__((noreturn))
cmd_create(int argc, char *argv[])
{
  uid_t uid = getuid();
  gid_t gid = getgid();
  int first = args_index(argc, argv, 0, "create");

  if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) < 0)
    die_with_error("creating namespaces");
  write_id_maps(uid, gid);
  /* Mount propagation is left as it is: the copied mounts are already
   * slaves of the host's (the new mount namespace belongs to a less
   * privileged user namespace), so host mounts still show up here and
   * nothing mounted here leaks out.  The sidecar makes the namespace's
   * view of the host (go-sidecar/view). */
  keep_only_sidecar_caps();
  set_no_new_privs();
  exec_sidecar(&argv[first], argc - first);
}

/* ---- join and enter -------------------------------------------------- */

/* The n values of option argv[*i] (described by `what`): each must be
 * there, non-empty and not "--" (which would end the options one word too
 * late).  Advances *i past them; returns the first. */
static char **
option_values(int argc, char *argv[], int *i, int n, const char *what)
{
  const char *option = argv[*i];

  for (int k = 1; k <= n; k++) {
    if (*i + k >= argc || strcmp(argv[*i + k], "--") == 0 || argv[*i + k][0] == '\0')
      die_usage("%s needs %s", option, what);
  }
  *i += n + 1;
  return &argv[*i - n];
}

/* A namespace's inode number: a decimal number > 0. */
static int
parse_ino(const char *text, unsigned long long *ino)
{
  char *end;

  errno = 0;
  if (text[0] < '0' || text[0] > '9')
    goto bad;
  *ino = strtoull(text, &end, 10);
  if (errno == 0 && *end == '\0' && *ino > 0)
    return 0;
bad:
  errno = EINVAL;
  return -1;
}

/* One option of NAMESPACES (or --cwd) at argv[*i], parsed into args. */
static void
parse_join_option(int argc, char *argv[], int *i, struct join_args *args, const char *command)
{
  const char *option = argv[*i];

  if (strcmp(option, "--pidfd") == 0) {
    const char *value = option_values(argc, argv, i, 1, "a file descriptor")[0];

    if (args->pidfd >= 0)
      die_usage("%s: --pidfd given twice", command);
    if (parse_int(value, 0, &args->pidfd) < 0)
      die_usage("--pidfd needs a file descriptor, got '%s'", value);
    return;
  }
  if (strcmp(option, "--cwd") == 0 && strcmp(command, "join") == 0) {
    if (args->cwd != NULL)
      die_usage("%s: --cwd given twice", command);
    args->cwd = option_values(argc, argv, i, 1, "a directory")[0];
    return;
  }
  for (int ns = 0; ns < NS_COUNT; ns++) {
    char name[16];

    snprintf(name, sizeof name, "--%sns", ns_names[ns]);
    if (strcmp(option, name) == 0) {
      const char *value = option_values(argc, argv, i, 1, "an inode number")[0];

      if (args->ino[ns] != 0)
        die_usage("%s: %s given twice", command, name);
      if (parse_ino(value, &args->ino[ns]) < 0)
        die_usage("%s needs an inode number, got '%s'", name, value);
      return;
    }
  }
  die_usage("%s: unknown option '%s'", command, option);
}

/* Only a pidfd names the process to join: a pid may have been reused by
 * the time it is opened.  Returns the index of the first argument after
 * "--". */
static int
parse_join_args(int argc, char *argv[], struct join_args *args, const char *command)
{
  int i = 0;

  memset(args, 0, sizeof *args);
  args->pidfd = -1;
  while (i < argc && strcmp(argv[i], "--") != 0)
    parse_join_option(argc, argv, &i, args, command);
  if (args->pidfd < 0)
    die_usage("%s needs --pidfd N", command);
  for (int ns = 0; ns < NS_COUNT; ns++) {
    if (args->ino[ns] == 0)
      die_usage("%s needs --%sns INO", command, ns_names[ns]);
  }
  return args_index(argc, argv, i, command);
}

static unsigned long long
own_namespace(const char *name)
{
  char path[32];
  struct stat st;

  snprintf(path, sizeof path, "/proc/self/ns/%s", name);
  if (stat(path, &st) < 0)
    die_with_error("reading %s", path);
  return (unsigned long long)st.st_ino;
}

static unsigned long long
inode_of(int fd, const char *what)
{
  struct stat st;

  if (fstat(fd, &st) < 0)
    die_with_error("reading %s", what);
  return (unsigned long long)st.st_ino;
}

/* The pid behind a pidfd, from /proc/self/fdinfo. */
static pid_t
pid_of(int pidfd)
{
  char path[64], line[256];
  FILE *f;
  long pid = 0;
  int found = 0;

  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
  f = fopen(path, "re");
  if (f == NULL)
    die_with_error("pidfd %d", pidfd);
  while (fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, "Pid:", 4) == 0) {
      pid = strtol(line + 4, NULL, 10);
      found = 1;
    }
  }
  fclose(f);
  if (pid <= 0) {
    /* -1: the process has exited; no Pid line: not a pidfd. */
    errno = found ? ESRCH : EBADF;
    die_with_error("pidfd %d", pidfd);
  }
  return (pid_t)pid;
}

/* Open the user, network and mount namespaces of the process behind
 * args->pidfd and check them: the inode numbers named, and a user namespace
 * that is a child of ours (`own`).  A process of the profile may have made
 * namespaces of its own, in which it holds every capability; entering
 * those would hand it what we carry.  Entering through these descriptors
 * leaves no gap between the check and setns. */
static void
open_namespaces(const struct join_args *args, int fds[NS_COUNT])
{
  pid_t pid = pid_of(args->pidfd);
  int parent;

  for (int ns = 0; ns < NS_COUNT; ns++) {
    char path[64];

    snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)pid, ns_names[ns]);
    fds[ns] = open(path, O_RDONLY | O_CLOEXEC);
    if (fds[ns] < 0)
      die_with_error("opening %s", path);
  }
  /* Still the process of the pidfd: its pid was not reused meanwhile. */
  if (syscall(SYS_pidfd_send_signal, args->pidfd, 0, NULL, 0) < 0)
    die_with_error("the process of pidfd %d", args->pidfd);
  for (int ns = 0; ns < NS_COUNT; ns++) {
    unsigned long long ino = inode_of(fds[ns], ns_names[ns]);

    if (ino != args->ino[ns]) {
      fprintf(stderr, PROG_NAME ": refusing: the %s namespace of pidfd %d is %llu, not %llu\n",
              ns_names[ns], args->pidfd, ino, args->ino[ns]);
      exit(EXIT_LAUNCHER_FAILED);
    }
  }
  parent = ioctl(fds[NS_USER], NS_GET_PARENT);
  if (parent < 0)
    die_with_error("finding the parent of the user namespace of pidfd %d", args->pidfd);
  if (inode_of(parent, "the parent user namespace") != own_namespace("user")) {
    fputs(PROG_NAME ": refusing: the user namespace is not a child of the caller's "
          "(a namespace made inside a profile)\n", stderr);
    exit(EXIT_LAUNCHER_FAILED);
  }
  close(parent);
}

/* Enter the checked namespaces of args->pidfd and go to args->cwd (or the
 * caller's working directory), which entering a mount namespace resets. */
static void
enter_namespaces(const struct join_args *args)
{
  static const int types[NS_COUNT] = { CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS };
  char *cwd = args->cwd != NULL ? strdup(args->cwd) : getcwd(NULL, 0);
  int fds[NS_COUNT];

  if (cwd == NULL)
    die_with_error("getting the working directory");
  open_namespaces(args, fds);
  /* The user namespace first: it is what gives us the right to enter the
   * others. */
  for (int ns = 0; ns < NS_COUNT; ns++) {
    if (setns(fds[ns], types[ns]) < 0)
      die_with_error("entering the %s namespace of pidfd %d", ns_names[ns], args->pidfd);
    close(fds[ns]);
  }
  close(args->pidfd);
  for (int ns = 0; ns < NS_COUNT; ns++) {
    if (own_namespace(ns_names[ns]) != args->ino[ns]) {
      fprintf(stderr, PROG_NAME ": refusing: not in the %s namespace named after entering it\n",
              ns_names[ns]);
      exit(EXIT_LAUNCHER_FAILED);
    }
  }
  if (chdir(cwd) < 0)
    die_with_error("changing directory to %s", cwd);
  free(cwd);
}

static void __attribute__((noreturn))
cmd_join(int argc, char *argv[])
{
  struct join_args args;
  int program = parse_join_args(argc, argv, &args, "join");

  if (program >= argc)
    die_usage("join: missing PROGRAM after '--'");
  enter_namespaces(&args);
  drop_all_capabilities();
  set_no_new_privs();
  exec_program(&argv[program]);
}

/* A new sidecar for namespaces whose sidecar died while programs were still
 * in them: the caller owns the user namespace, so entering it gives every
 * capability there, of which the sidecar keeps its own, as after create.
 * What the dead sidecar mounted is still in place. */
static void __attribute__((noreturn))
cmd_enter(int argc, char *argv[])
{
  struct join_args args;
  int first = parse_join_args(argc, argv, &args, "enter");

  args.cwd = "/";
  enter_namespaces(&args);
  keep_only_sidecar_caps();
  set_no_new_privs();
  exec_sidecar(&argv[first], argc - first);
}

/* ---- main ------------------------------------------------------------ */

int
main(int argc, char *argv[])
{
  if (argc >= 2 && strcmp(argv[1], "--expect-version") == 0) {
    if (argc < 3 || argv[2][0] == '\0' || strcmp(argv[2], "--") == 0)
      die_usage("--expect-version needs a version");
    if (argc >= 4 && strcmp(argv[3], "--expect-version") == 0)
      die_usage("--expect-version given twice");
    if (strcmp(argv[2], WG_WRAP_VERSION) != 0) {
      fprintf(stderr, PROG_NAME ": this is version %s, but wg-wrap %s runs it: "
              "install both from the same release\n", WG_WRAP_VERSION, argv[2]);
      exit(EXIT_LAUNCHER_FAILED);
    }
    argc -= 2;
    argv += 2;
  }
  if (argc < 2)
    die_usage("missing command");
  if (strcmp(argv[1], "--help") == 0) {
    fputs(usage_text, stdout);
    return fflush(stdout) == 0 ? 0 : EXIT_LAUNCHER_FAILED;
  }
  if (strcmp(argv[1], "--version") == 0) {
    puts(PROG_NAME " " WG_WRAP_VERSION);
    return fflush(stdout) == 0 ? 0 : EXIT_LAUNCHER_FAILED;
  }
  if (strcmp(argv[1], "create") == 0)
    cmd_create(argc - 2, argv + 2);
  if (strcmp(argv[1], "join") == 0)
    cmd_join(argc - 2, argv + 2);
  if (strcmp(argv[1], "enter") == 0)
    cmd_enter(argc - 2, argv + 2);
  if (strcmp(argv[1], "aftercare") == 0)
    cmd_aftercare(argc - 2, argv + 2);
  die_usage("unknown command '%s'", argv[1]);
}
