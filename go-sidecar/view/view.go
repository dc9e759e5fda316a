// Package view makes and keeps what a profile's programs see of the host's
// /etc and /run, for as long as the profile runs.
//
// A mount placed on a host path does not last: since Linux 3.18, when the
// host renames or unlinks a file or directory that is a mount point in
// another mount namespace, the mount there is taken off, silently. The host
// does this all the time to /etc/resolv.conf (NetworkManager, dhclient,
// resolvconf) and to the run directories of daemons that restart (nscd).
// So the profile's namespace does not hide host paths under mounts; it shows
// views: /etc and /run are tmpfs mounts (on directories the host never
// removes) that hold what the profile's programs may see — each host entry
// bound on a placeholder of the view's own, the rest left out — and
// resolv.conf is a file of the view. The host cannot take anything off a
// view: its renames and removals touch its own directories, never a mount
// point. What it adds, removes or replaces is followed from inotify events
// on its directories (read from a mount namespace where the views are not
// mounted: host.go): an entry a rule denies (a resolver's socket directory)
// is never shown, however often the host makes it anew.
//
// wg-wrap's own directories (runtime state, configs) are hidden under an
// empty private tmpfs each: directories that belong to the user, which the
// host leaves alone. Should the host replace a directory they are in (a
// new /run/user/UID after logging out and in), the mount table changes and
// the hide is put back.
package view

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// dirEvents: what changes a viewed directory's entries, or its
	// generated files (written in place: IN_CLOSE_WRITE).
	dirEvents = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
		unix.IN_CLOSE_WRITE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR
	// hideEvents: a hidden directory made again in its parent.
	hideEvents = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_ONLYDIR
	// hideTmpfs: small, and private: wg-wrap run inside a profile keeps
	// its own runtime state there.
	hideTmpfs = "mode=0700,size=4m,nr_inodes=1024"
	// maxGenerated bounds what is read of a host file the view copies.
	maxGenerated = 1 << 20
)

// Config says what the profile's programs see.
type Config struct {
	// ResolvConf is the profile's resolv.conf (its DNS servers); nil: the
	// host's, followed as it changes.
	ResolvConf []byte
	// Hide: directories shown empty, each under a private tmpfs
	// (wg-wrap's runtime directories, the directory of configs by name).
	Hide []string
	// Etc and Run are the viewed directories ("/etc", "/run"); VarRun is
	// "/var/run" where that is a directory of its own rather than a link
	// to /run (it then gets /run's rules). Tests give other paths.
	Etc, Run, VarRun string
	Logf             func(string, ...any) // what changes (verbose)
	Errorf           func(string, ...any)
	// Report gets the status whenever it changes (for `wg-wrap status`).
	Report func(Status)
}

// DefaultConfig views the real /etc and /run (and /var/run where it is a
// directory of its own).
func DefaultConfig() Config {
	c := Config{Etc: "/etc", Run: "/run"}
	if st, err := os.Lstat("/var/run"); err == nil && st.IsDir() {
		c.VarRun = "/var/run"
	}
	return c
}

// Status is what `wg-wrap status` shows of the view.
type Status struct {
	Intact     bool      `json:"intact"`
	DNS        string    `json:"dns"`      // "profile" or "host"
	Absorbed   int       `json:"absorbed"` // host changes dealt with: followed, or kept out
	LastChange time.Time `json:"last_change,omitzero"`
	Problem    string    `json:"problem,omitempty"` // why it is not intact
}

type hide struct {
	path string
	dev  uint64 // the hiding tmpfs's device, 0 until mounted
	wd   int    // inotify watch on the parent directory, -1 without
}

// View is the running view of one profile's namespace.
type View struct {
	cfg       Config
	host      *hostSide
	inotify   int
	mountinfo int
	watches   map[int]*dirView
	roots     []*dirView
	hides     []*hide
	resolvWD  int    // no DNS: the watch on the directory of the host's resolv.conf target
	resolvDir string // and that directory
	etc       *dirView
	events    []byte // what inotify has, read into the same buffer each time

	mu     sync.Mutex
	status Status
}

// Build makes the view (or takes over the one an earlier sidecar made, and
// brings it up to date): before any program joins the namespace.
func Build(cfg Config) (*View, error) {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Errorf == nil {
		cfg.Errorf = func(string, ...any) {}
	}
	v := &View{cfg: cfg, watches: map[int]*dirView{}, resolvWD: -1, mountinfo: -1, inotify: -1,
		events: make([]byte, 4096)}
	v.status = Status{Intact: true, DNS: "host"}
	if cfg.ResolvConf != nil {
		v.status.DNS = "profile"
	}
	ok := false
	defer func() {
		if !ok {
			v.Close()
		}
	}()
	paths := []string{cfg.Etc, cfg.Run}
	if cfg.VarRun != "" {
		paths = append(paths, cfg.VarRun)
	}
	// The hides too: in the host side's copy, what an earlier sidecar of
	// this profile mounted comes off (a hide made by an outer profile, for
	// wg-wrap run inside a profile, is locked there and stays).
	for _, p := range cfg.Hide {
		paths = append(paths, filepath.Clean(p))
	}
	var err error
	if v.host, err = startHostSide(paths); err != nil {
		return nil, err
	}
	if v.inotify, err = unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK); err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if v.mountinfo, err = unix.Open("/proc/self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("opening the mount table: %w", err)
	}
	specs := []*dirSpec{etcSpec(cfg.Etc, cfg.ResolvConf != nil), runSpec(cfg.Run)}
	if cfg.VarRun != "" {
		specs = append(specs, runSpec(cfg.VarRun))
	}
	for _, spec := range specs {
		d := &dirView{v: v, spec: spec, rw: -1, wd: -1, nested: map[string]*dirView{}}
		v.roots = append(v.roots, d)
		if err := d.setUp(0); err != nil {
			return nil, err
		}
		if err := d.syncAll(); err != nil {
			return nil, err
		}
	}
	v.etc = v.roots[0]
	for _, p := range cfg.Hide {
		h := &hide{path: filepath.Clean(p), wd: -1}
		v.hides = append(v.hides, h)
		if _, err := v.keepHidden(h); err != nil {
			return nil, err
		}
	}
	ok = true
	return v, nil
}

// Status is the view's current status.
func (v *View) Status() Status {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.status
}

func (v *View) logf(format string, args ...any) { v.cfg.Logf(format, args...) }

// Close stops following the host; the mounts stay as long as the namespace.
func (v *View) Close() {
	for _, d := range v.roots {
		d.close()
	}
	for _, fd := range []int{v.inotify, v.mountinfo} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	v.inotify, v.mountinfo = -1, -1
	if v.host != nil {
		close(v.host.calls)
		v.host = nil
	}
}

// generated is the content of a file the view writes (ok false: none).
func (v *View) generated(dir, name string) (content []byte, ok bool, err error) {
	switch {
	case dir == v.cfg.Etc && name == resolvConf && v.cfg.ResolvConf != nil:
		return v.cfg.ResolvConf, true, nil
	case dir == v.cfg.Etc && name == resolvConf:
		return v.hostResolvConf()
	case dir == v.cfg.Etc && name == nsswitchConf:
		data, err := v.host.readFile(filepath.Join(dir, name), maxGenerated)
		if errors.Is(err, unix.ENOENT) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		return rewriteNSSwitch(data), true, nil
	}
	return nil, false, fmt.Errorf("no content for %s", filepath.Join(dir, name))
}

// hostResolvConf is the host's resolv.conf as a program on the host reads
// it (through its symlinks: resolvconf's or systemd-resolved's file); the
// directory that file is in is watched too, since the host replaces it
// there.
func (v *View) hostResolvConf() ([]byte, bool, error) {
	path := filepath.Join(v.cfg.Etc, resolvConf)
	if target, err := v.host.realpath(path); err == nil {
		v.watchResolvDir(filepath.Dir(target))
	}
	data, err := v.host.readFile(path, maxGenerated)
	if errors.Is(err, unix.ENOENT) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return data, true, nil
}

func (v *View) watchResolvDir(dir string) {
	if dir == v.cfg.Etc || dir == v.resolvDir {
		return
	}
	if v.resolvWD >= 0 {
		unix.InotifyRmWatch(v.inotify, uint32(v.resolvWD))
		v.resolvWD = -1
	}
	wd, err := v.host.watch(v.inotify, dir, dirEvents&^unix.IN_ONLYDIR|unix.IN_MODIFY)
	if err != nil {
		v.cfg.Errorf("view: watching %s: %v", dir, err)
		return
	}
	v.resolvWD, v.resolvDir = wd, dir
}

// keepHidden puts the hide back when what is at its path is not it: when
// the profile's namespace shows there what the host has (the host side's
// view of it), which an earlier sidecar's hide, taken over, does not.
func (v *View) keepHidden(h *hide) (bool, error) {
	parent := filepath.Dir(h.path)
	if wd, err := unix.InotifyAddWatch(v.inotify, parent, hideEvents); err == nil {
		h.wd = wd
	}
	var st unix.Stat_t
	if err := unix.Stat(h.path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil // nothing to hide; made later, it is seen then
		}
		return false, fmt.Errorf("hiding %s: %w", h.path, err)
	}
	if h.dev != 0 && st.Dev == h.dev {
		return false, nil
	}
	host, err := v.host.stat(h.path)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return false, fmt.Errorf("hiding %s: %w", h.path, err)
	}
	if h.dev == 0 && err == nil && (st.Dev != host.Dev || st.Ino != host.Ino) {
		h.dev = st.Dev // an earlier sidecar's hide
		return false, nil
	}
	if err := unix.Mount("tmpfs", h.path, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, hideTmpfs); err != nil {
		return false, fmt.Errorf("hiding %s: %w", h.path, err)
	}
	if err := unix.Stat(h.path, &st); err != nil {
		return true, fmt.Errorf("hiding %s: %w", h.path, err)
	}
	h.dev = st.Dev
	v.logf("view: %s hidden", h.path)
	return true, nil
}

// Run follows the host until stop is closed: inotify for the viewed
// directories, the mount table for the hides. Nothing is polled on a timer.
func (v *View) Run(stop <-chan struct{}) {
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		v.problem(fmt.Sprintf("cannot follow the host: %v", err))
		return
	}
	defer unix.Close(wake)
	go func() {
		<-stop
		unix.Write(wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}()
	fds := []unix.PollFd{
		{Fd: int32(v.inotify), Events: unix.POLLIN},
		{Fd: int32(v.mountinfo), Events: unix.POLLPRI},
		{Fd: int32(wake), Events: unix.POLLIN},
	}
	for {
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			v.problem(fmt.Sprintf("cannot follow the host: %v", err))
			return
		}
		if fds[2].Revents != 0 {
			return
		}
		changed := 0
		if fds[1].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
			changed += v.mountsChanged()
		}
		if fds[0].Revents&unix.POLLIN != 0 {
			changed += v.readEvents()
		}
		if changed > 0 {
			v.absorbed(changed)
		}
	}
}

// mountsChanged checks every hide after the mount table changed (the poll
// that said so has re-armed itself: proc's mountinfo poll).
func (v *View) mountsChanged() int {
	changed := 0
	for _, h := range v.hides {
		did, err := v.keepHidden(h)
		if err != nil {
			v.problem(err.Error())
		}
		if did {
			changed++
		}
	}
	return changed
}

// readEvents handles what inotify has: each named entry is synced once.
// It returns how many host changes it dealt with (an entry that changed,
// whether the view followed it or kept it out).
func (v *View) readEvents() int {
	type key struct {
		d    *dirView
		name string
	}
	todo := map[key]bool{}
	var full []*dirView
	resolv, hides := false, false
	buf := v.events
	for {
		n, err := unix.Read(v.inotify, buf)
		if n <= 0 || err != nil {
			break
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int(int32(binary.NativeEndian.Uint32(buf[off:])))
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			size := int(binary.NativeEndian.Uint32(buf[off+12:]))
			end := min(off+unix.SizeofInotifyEvent+size, n)
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:end]), "\x00")
			off = end
			switch {
			case mask&unix.IN_Q_OVERFLOW != 0:
				full = append(full, v.roots...)
				resolv, hides = true, true
			case wd == v.resolvWD:
				resolv = true
			case v.watches[wd] != nil:
				d := v.watches[wd]
				if name == "" { // the directory itself moved or went
					full = append(full, d)
				} else if mask&unix.IN_CLOSE_WRITE == 0 || d.spec.rule(name) == generate {
					todo[key{d, name}] = true
				}
				if d == v.etc && name == resolvConf {
					resolv = true
				}
			default:
				hides = true
			}
		}
	}
	dealt := len(todo) + len(full)
	report := func(_ bool, err error) {
		if err != nil {
			v.problem(err.Error())
		}
	}
	for k := range todo {
		report(k.d.sync(k.name))
	}
	for _, d := range full {
		report(true, d.syncAll())
	}
	if resolv && v.cfg.ResolvConf == nil {
		report(v.etc.sync(resolvConf))
	}
	if hides {
		for _, h := range v.hides {
			did, err := v.keepHidden(h)
			report(did, err)
			if did {
				dealt++
			}
		}
	}
	return dealt
}

func (v *View) absorbed(n int) {
	v.mu.Lock()
	v.status.Absorbed += n
	v.status.LastChange = time.Now()
	s := v.status
	v.mu.Unlock()
	v.logf("view: followed %d host change(s), %d in all", n, s.Absorbed)
	if v.cfg.Report != nil {
		v.cfg.Report(s)
	}
}

// problem records that the view could not be kept as it should.
func (v *View) problem(what string) {
	v.mu.Lock()
	v.status.Intact = false
	v.status.Problem = what
	s := v.status
	v.mu.Unlock()
	v.cfg.Errorf("view: %s", what)
	if v.cfg.Report != nil {
		v.cfg.Report(s)
	}
}
