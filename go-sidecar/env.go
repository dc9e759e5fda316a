package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// fdFromEnv returns the file descriptor named by the environment variable
// name, checked to be open. A missing variable is an error only if required;
// then -1 is returned.
func fdFromEnv(name string, required bool) (int, error) {
	value, set := os.LookupEnv(name)
	if !set || value == "" {
		if required {
			return -1, errors.New("not set (the parent must pass an inherited file descriptor)")
		}
		return -1, nil
	}
	fd, err := strconv.Atoi(value)
	if err != nil || fd < 0 {
		return -1, fmt.Errorf("%q is not a file descriptor number", value)
	}
	if fd <= 2 {
		return -1, fmt.Errorf("%d is a standard stream, not an inherited descriptor", fd)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return -1, fmt.Errorf("file descriptor %d is not open: %w", fd, err)
	}
	// Not to be passed on, should anything ever be executed.
	unix.CloseOnExec(fd)
	return fd, nil
}

// readyPipe tells the parent the outcome of startup, once: "READY\n" or
// "ERROR <message>\n", then closes the pipe. Without a pipe it does nothing.
type readyPipe struct {
	file *os.File
}

func readyFromEnv() (*readyPipe, error) {
	fd, err := fdFromEnv(envReadyFD, false)
	if err != nil || fd < 0 {
		return &readyPipe{}, err
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return &readyPipe{}, fmt.Errorf("file descriptor %d: %w", fd, err)
	}
	if mode := flags & unix.O_ACCMODE; mode != unix.O_WRONLY && mode != unix.O_RDWR {
		return &readyPipe{}, fmt.Errorf("file descriptor %d is not open for writing", fd)
	}
	return &readyPipe{file: os.NewFile(uintptr(fd), "ready-pipe")}, nil
}

func (r *readyPipe) ok() error { return r.send("READY\n") }

func (r *readyPipe) fail(message string) {
	_ = r.send("ERROR " + oneLine(message) + "\n")
}

func (r *readyPipe) send(line string) error {
	if r.file == nil {
		return nil
	}
	f := r.file
	r.file = nil
	_, err := f.WriteString(line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// oneLine keeps the parent's line protocol intact whatever an error says.
func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\n' || c == '\r' {
			b[i] = ' '
		}
	}
	return string(b)
}
