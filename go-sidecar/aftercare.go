package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"wg-wrap/go-sidecar/hold"
)

const (
	envLifeFD         = "WG_WRAP_LIFE_FD"
	aftercareInterval = 200 * time.Millisecond
)

// lifePipe is the sidecar's end of the pipe its aftercare process watches:
// the sidecar writes hold.CleanMark when it ends on purpose; if it dies
// instead, the kernel closes the pipe and the aftercare process takes over.
type lifePipe struct{ file *os.File }

func lifeFromEnv() (*lifePipe, error) {
	fd, err := fdFromEnv(envLifeFD, false)
	if err != nil || fd < 0 {
		return &lifePipe{}, err
	}
	os.Unsetenv(envLifeFD)
	return &lifePipe{os.NewFile(uintptr(fd), "life-pipe")}, nil
}

// endedOnPurpose tells the aftercare process there is nothing to look after.
func (l *lifePipe) endedOnPurpose() {
	if l.file != nil {
		l.file.Write([]byte{hold.CleanMark})
		l.file.Close()
	}
}

// aftercare is `wg-wrap-sidecar aftercare`: started by wg-wrap on the host
// next to each sidecar, it waits on the read end of the sidecar's life pipe
// (--life-fd) and, if the sidecar dies, tells the programs still in its
// namespace and removes the profile once they are gone (hold.Aftercare).
func aftercare(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(progName+" aftercare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pid := fs.Int("pid", 0, "the sidecar's pid")
	profileDir := fs.String("profile-dir", "", "the profile's runtime directory")
	lifeFD := fs.Int("life-fd", -1, "read end of the sidecar's life pipe")
	config := fs.String("config", "", "the config the profile was started with (named in the message)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *pid <= 0 || *profileDir == "" || *lifeFD <= 2 || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "usage: %s aftercare --pid PID --profile-dir DIR --life-fd FD [--config FILE]\n", progName)
		return exitUsage
	}
	life := os.NewFile(uintptr(*lifeFD), "life-pipe")
	unix.CloseOnExec(*lifeFD)
	// Read now, while the sidecar is certainly alive (wg-wrap holds a pidfd).
	netns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", *pid))
	if err != nil {
		fmt.Fprintf(stderr, "%s aftercare: reading the sidecar's namespace: %v\n", progName, err)
		return exitFailure
	}
	signal.Ignore(unix.SIGHUP, unix.SIGINT)
	if !hold.Died(life) {
		return exitOK
	}
	name := filepath.Base(*profileDir)
	command := "wg-wrap up -n " + name
	if *config != "" {
		command += " -c " + shellQuote(*config)
	}
	a := &hold.Aftercare{
		ProcRoot: "/proc", Netns: netns, Exclude: []int{os.Getpid()},
		ProfileDir: *profileDir, SidecarPID: *pid, Interval: aftercareInterval,
		Message: fmt.Sprintf("\nwg-wrap: the tunnel of profile %s is down: its sidecar (pid %d) "+
			"ended unexpectedly. Programs in it have no network (nothing leaves in clear) "+
			"until `%s` brings the tunnel back, in place.\n", name, *pid, command),
	}
	if _, err := a.Tell(); err != nil {
		fmt.Fprintf(stderr, "%s aftercare: %v\n", progName, err)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, unix.SIGTERM)
	stop := make(chan struct{})
	go func() { <-term; close(stop) }()
	if err := a.Bury(stop); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "%s aftercare: %v\n", progName, err)
		return exitFailure
	}
	return exitOK
}

// shellQuote quotes s for a shell when it needs it (as Python's shlex.quote).
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}
