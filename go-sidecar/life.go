package main

import (
	"os"

	"wg-wrap/go-sidecar/hold"
)

const envLifeFD = "WG_WRAP_LIFE_FD"

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
