/* wg-wrap-launcher: the only part of wg-wrap that creates or joins namespaces.
 *
 * unshare(CLONE_NEWUSER) and setns() into a user namespace fail with EINVAL
 * in a multi-threaded process, and neither the Go sidecar nor the Python
 * orchestrator can promise to be single-threaded.  So this small program does
 * the namespace system calls and then execs the real program in place: the
 * program keeps the launcher's pid and every fd it was given.
 *
 *   create: new user + mount + net namespaces, the caller's uid/gid mapped to
 *           themselves, a few mounts, CAP_NET_ADMIN as an ambient capability.
 *   join:   enter the namespaces of a running process (through a pidfd),
 *           restore the working directory, drop every capability.
 *   enter:  the same, keeping CAP_NET_ADMIN as create does: a new sidecar in
 *           the namespaces of a profile whose sidecar died.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef WG_WRAP_VERSION
#define WG_WRAP_VERSION "0.1.0"
#endif

#define PROG_NAME "wg-wrap-launcher"

enum {
  EXIT_LAUNCHER_FAILED = 125,
  EXIT_CANNOT_EXECUTE = 126,
  EXIT_NOT_FOUND = 127,
};

/* Small, so that an --tmpfs used to hide a directory cannot fill memory. */
#define TMPFS_OPTIONS "mode=0755,size=1m,nr_inodes=1024"

static const char usage_text[] =
  "Usage: " PROG_NAME " [--expect-version V] create [OP]... -- PROGRAM [ARG]...\n"
  "       " PROG_NAME " [--expect-version V] join --pidfd N [--cwd DIR] -- PROGRAM [ARG]...\n"
  "       " PROG_NAME " [--expect-version V] enter --pidfd N [--cwd DIR] -- PROGRAM [ARG]...\n"
  "       " PROG_NAME " --version | --help\n"
  "\n"
  "--expect-version V, before the command, refuses to run unless V is the\n"
  "launcher's own version (wg-wrap passes its version: a stale helper left\n"
  "behind by an upgrade must fail, not half work).\n"
  "\n"
  "create: unshare user, mount and network namespaces, map the caller's uid and\n"
  "gid to themselves, run the OPs in the order given, then execute PROGRAM with\n"
  "CAP_NET_ADMIN (only) as an ambient capability.\n"
  "  --bind SRC DST   bind-mount SRC over the existing DST (a symlink DST is\n"
  "                   resolved: the mount goes over its final target)\n"
  "  --tmpfs DIR      mount an empty tmpfs (0755, nosuid, nodev, 1 MiB) over DIR\n"
  "  --file SRC DST   create the regular file DST (it must not exist), then\n"
  "                   bind-mount SRC over it\n"
  "\n"
  "join: enter the user, mount and network namespaces of the process whose\n"
  "pidfd N is inherited, change to the caller's working directory (or DIR),\n"
  "drop every capability and execute PROGRAM.\n"
  "\n"
  "enter: like join, but keep CAP_NET_ADMIN (only) as an ambient capability,\n"
  "as create does: a new sidecar for namespaces whose sidecar died while\n"
  "programs were still in them.\n"
  "\n"
  "All three set no_new_privs for PROGRAM: setuid bits and file capabilities give\n"
  "it nothing. Each value is one argument, never '--'; an option given twice\n"
  "(other than an OP) is an error. File descriptors are passed on unchanged.\n"
  "\n"
  "Exit status: PROGRAM's status; 125 if the launcher fails or is used wrongly\n"
  "(one line on stderr names the failed step); 126 if PROGRAM cannot be\n"
  "executed; 127 if it is not found.\n";

enum op_kind { OP_BIND, OP_TMPFS, OP_FILE };

struct op {
  enum op_kind kind;
  const char *src; /* NULL for OP_TMPFS */
  const char *dst;
};

struct join_args {
  int pidfd; /* -1 until --pidfd */
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

/* Drop every capability from the bounding set except `keep` (-1: none).
 * With an empty bounding set even a uid 0 program, or a program with file
 * capabilities, gets nothing from execve beyond the ambient set. */
static void
drop_bounding_set(int keep)
{
  long last_cap;

  if (read_int_file("/proc/sys/kernel/cap_last_cap", &last_cap) < 0)
    die_with_error("reading /proc/sys/kernel/cap_last_cap");
  for (long cap = 0; cap <= last_cap; cap++) {
    if (cap != keep && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
      die_with_error("dropping capability %ld from the bounding set", cap);
  }
}

/* After execve as a non-zero uid the program has exactly CAP_NET_ADMIN (in
 * the new user namespace) in its permitted, effective and ambient sets: an
 * ambient capability survives execve of an ordinary file, the others are
 * dropped by execve itself.  The bounding set is cut down to CAP_NET_ADMIN
 * too, so that a caller running as uid 0 gets no more than that. */
static void
keep_only_net_admin(void)
{
  struct __user_cap_data_struct data[2];

  if (capget_all(data) < 0)
    die_with_error("reading capabilities");
  /* Ambient capabilities must be both permitted and inheritable. */
  data[0].inheritable = 1U << CAP_NET_ADMIN;
  data[1].inheritable = 0;
  if (capset_all(data) < 0)
    die_with_error("setting inheritable capabilities");
  drop_bounding_set(CAP_NET_ADMIN);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN, 0, 0) < 0)
    die_with_error("raising ambient capability CAP_NET_ADMIN");
}

/* No capability at all, whatever the uid: ambient cleared, bounding set
 * empty (so execve grants nothing, even to uid 0), every other set empty. */
static void
drop_all_capabilities(void)
{
  struct __user_cap_data_struct data[2];

  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
    die_with_error("clearing ambient capabilities");
  drop_bounding_set(-1);
  memset(data, 0, sizeof data);
  if (capset_all(data) < 0)
    die_with_error("clearing capabilities");
}

/* no_new_privs, as bubblewrap always sets it: execve of a setuid, setgid or
 * file-capability program then grants nothing, and no LSM may move PROGRAM
 * to a more privileged domain.  Inside our namespaces only the caller's own
 * uid and gid are mapped and the bounding set is cut, so this is a second
 * wall, not the only one.  It keeps create's ambient CAP_NET_ADMIN: the
 * kernel strips on execve only what would exceed the permitted set held
 * before it, and an ambient capability is already permitted. */
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

static void
bind_mount(const char *src, const char *dst)
{
  if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
    die_with_error("bind-mounting %s over %s", src, dst);
}

static void
op_bind(const struct op *op)
{
  /* A symlink such as /etc/resolv.conf -> ../run/systemd/resolve/... is
   * resolved first: mount(2) would follow it too, but this way a dangling
   * link fails as its own step and messages name the real target. */
  char *target = realpath(op->dst, NULL);

  if (target == NULL)
    die_with_error("resolving %s", op->dst);
  bind_mount(op->src, target);
  free(target);
}

static void
op_tmpfs(const struct op *op)
{
  if (mount("tmpfs", op->dst, "tmpfs", MS_NOSUID | MS_NODEV, TMPFS_OPTIONS) < 0)
    die_with_error("mounting tmpfs on %s", op->dst);
}

static void
op_file(const struct op *op)
{
  /* O_EXCL: DST must not exist, not even as a symlink. */
  int fd = open(op->dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);

  if (fd < 0)
    die_with_error("creating %s", op->dst);
  close(fd);
  bind_mount(op->src, op->dst);
}

static void
run_ops(const struct op *ops, int n_ops)
{
  for (int i = 0; i < n_ops; i++) {
    switch (ops[i].kind) {
    case OP_BIND: op_bind(&ops[i]); break;
    case OP_TMPFS: op_tmpfs(&ops[i]); break;
    case OP_FILE: op_file(&ops[i]); break;
    }
  }
}

/* The n values of option argv[*i] (described by `what`, e.g. "SRC DST"):
 * each must be there, non-empty and not "--" (which would end the options
 * one word too late).  Advances *i past them; returns the first. */
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

/* PROGRAM after the options, which end at argv[i] == "--". */
static int
program_index(int argc, char *argv[], int i, const char *command)
{
  if (i >= argc || strcmp(argv[i], "--") != 0)
    die_usage("%s: missing '-- PROGRAM'", command);
  if (i + 1 >= argc)
    die_usage("%s: missing PROGRAM after '--'", command);
  return i + 1;
}

/* Parse the OPs up to "--" into ops[] (room for argc entries); returns the
 * index of PROGRAM in argv. */
static int
parse_create_args(int argc, char *argv[], struct op *ops, int *n_ops)
{
  int i = 0;

  *n_ops = 0;
  while (i < argc && strcmp(argv[i], "--") != 0) {
    struct op *op = &ops[(*n_ops)++];
    char **values;

    if (strcmp(argv[i], "--bind") == 0 || strcmp(argv[i], "--file") == 0) {
      op->kind = strcmp(argv[i], "--bind") == 0 ? OP_BIND : OP_FILE;
      values = option_values(argc, argv, &i, 2, "SRC and DST (two arguments)");
      op->src = values[0];
      op->dst = values[1];
    } else if (strcmp(argv[i], "--tmpfs") == 0) {
      op->kind = OP_TMPFS;
      op->src = NULL;
      op->dst = option_values(argc, argv, &i, 1, "a directory")[0];
    } else {
      die_usage("create: unknown option '%s'", argv[i]);
    }
  }
  return program_index(argc, argv, i, "create");
}

static void __attribute__((noreturn))
cmd_create(int argc, char *argv[])
{
  struct op *ops = calloc((size_t)argc + 1, sizeof *ops);
  uid_t uid = getuid();
  gid_t gid = getgid();
  int n_ops, program;

  if (ops == NULL)
    die_with_error("allocating memory");
  program = parse_create_args(argc, argv, ops, &n_ops);

  if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) < 0)
    die_with_error("creating namespaces");
  write_id_maps(uid, gid);
  /* Mount propagation is left as it is: the copied mounts are already
   * slaves of the host's (the new mount namespace belongs to a less
   * privileged user namespace), so host mounts still show up here and
   * nothing mounted here leaks out. */
  run_ops(ops, n_ops);
  free(ops);
  keep_only_net_admin();
  set_no_new_privs();
  exec_program(&argv[program]);
}

/* ---- join ------------------------------------------------------------ */

/* Only a pidfd names the process to join: a pid may have been reused by
 * the time it is opened. */
static int
parse_join_args(int argc, char *argv[], struct join_args *args, const char *command)
{
  int i = 0;

  args->pidfd = -1;
  args->cwd = NULL;
  while (i < argc && strcmp(argv[i], "--") != 0) {
    const char *option = argv[i];

    if (strcmp(option, "--pidfd") == 0) {
      const char *value = option_values(argc, argv, &i, 1, "a file descriptor")[0];

      if (args->pidfd >= 0)
        die_usage("%s: --pidfd given twice", command);
      if (parse_int(value, 0, &args->pidfd) < 0)
        die_usage("--pidfd needs a file descriptor, got '%s'", value);
    } else if (strcmp(option, "--cwd") == 0) {
      if (args->cwd != NULL)
        die_usage("%s: --cwd given twice", command);
      args->cwd = option_values(argc, argv, &i, 1, "a directory")[0];
    } else {
      die_usage("%s: unknown option '%s'", command, option);
    }
  }
  if (args->pidfd < 0)
    die_usage("%s needs --pidfd N", command);
  return program_index(argc, argv, i, command);
}

/* Setns into the user, mount and network namespaces of args->pidfd, and go
 * to args->cwd (or the caller's working directory), which entering a mount
 * namespace resets. */
static void
enter_namespaces(const struct join_args *args)
{
  char *cwd = args->cwd != NULL ? strdup(args->cwd) : getcwd(NULL, 0);

  if (cwd == NULL)
    die_with_error("getting the working directory");
  /* One call with a pidfd (Linux >= 5.8) enters all three at once; the user
   * namespace first, which is what gives us the right to enter the others. */
  if (setns(args->pidfd, CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) < 0)
    die_with_error("joining the namespaces of pidfd %d", args->pidfd);
  close(args->pidfd);
  if (chdir(cwd) < 0)
    die_with_error("changing directory to %s", cwd);
  free(cwd);
}

static void __attribute__((noreturn))
cmd_join(int argc, char *argv[])
{
  struct join_args args;
  int program = parse_join_args(argc, argv, &args, "join");

  enter_namespaces(&args);
  drop_all_capabilities();
  set_no_new_privs();
  exec_program(&argv[program]);
}

/* A new sidecar for namespaces whose sidecar died while programs were still
 * in them: the caller owns the user namespace, so entering it gives every
 * capability there, of which PROGRAM keeps CAP_NET_ADMIN, as after create.
 * The mounts made by create are still in place. */
static void __attribute__((noreturn))
cmd_enter(int argc, char *argv[])
{
  struct join_args args;
  int program = parse_join_args(argc, argv, &args, "enter");

  enter_namespaces(&args);
  keep_only_net_admin();
  set_no_new_privs();
  exec_program(&argv[program]);
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
  die_usage("unknown command '%s'", argv[1]);
}
