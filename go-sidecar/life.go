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

const (
	envStartFD = "WG_WRAP_START_FD"
	// startDone is what wg-wrap writes on the start pipe once the profile
	// is recorded and looked after: from then on the sidecar is on its own.
	startDone = 'k'
)

// abandonedFromEnv watches the start pipe, whose write end the wg-wrap
// command that starts the profile holds: the returned channel closes when
// that command went (killed, say) before it finished the start, so that no
// sidecar nobody recorded or configured is left running. Nil without a pipe.
func abandonedFromEnv() (<-chan struct{}, error) {
	fd, err := fdFromEnv(envStartFD, false)
	if err != nil || fd < 0 {
		return nil, err
	}
	os.Unsetenv(envStartFD)
	pipe := os.NewFile(uintptr(fd), "start-pipe")
	abandoned := make(chan struct{})
	go func() {
		defer pipe.Close()
		var b [1]byte
		if n, _ := pipe.Read(b[:]); n != 1 || b[0] != startDone {
			close(abandoned)
		}
	}()
	return abandoned, nil
}

const envOuterHoldFD = "WG_WRAP_OUTER_HOLD_FD"

// outerHold is the hold (a shared flock) of the profile this one rides on
// (`--via`): kept open for as long as the sidecar runs, so that an
// ephemeral outer profile does not end under it.
var outerHold *os.File

func keepOuterHold() error {
	fd, err := fdFromEnv(envOuterHoldFD, false)
	if err != nil || fd < 0 {
		return err
	}
	os.Unsetenv(envOuterHoldFD)
	outerHold = os.NewFile(uintptr(fd), "outer-hold")
	return nil
}
