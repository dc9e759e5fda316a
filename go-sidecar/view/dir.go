package view

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

const (
	// moveMountBeneath (Linux 6.5) attaches a mount under the one on top of
	// a mount point, so that taking the top one off swaps them in one step.
	moveMountBeneath = 0x200
	// maxStack bounds the loops that take mounts off one mount point.
	maxStack = 16
	// viewTmpfs: the tmpfs a view is made on holds only empty placeholders,
	// symlinks and a few small generated files.
	viewTmpfs = "mode=0755,size=1m,nr_inodes=4096"
)

// dirView is the view of one host directory: a tmpfs mounted on the same
// path in the profile's namespace (read-only there), holding a placeholder
// for each host entry with the entry bound on it, copies of symlinks, the
// generated files, and the nested views.
type dirView struct {
	v      *View
	spec   *dirSpec
	rw     int    // a writable, detached clone of the tmpfs: how the view writes to it
	dev    uint64 // the tmpfs's device: what is not on it is mounted on a placeholder
	wd     int    // inotify watch on the host directory, -1 without
	nested map[string]*dirView
}

// setUp gives d its tmpfs: the one already mounted at its path when an
// earlier sidecar made it (recognised by being neither the host's directory
// nor a placeholder of the parent view, whose device is parentDev), else a
// new one.
func (d *dirView) setUp(parentDev uint64) error {
	path := d.spec.path
	host, err := d.v.host.lstat(path)
	if err != nil {
		return fmt.Errorf("%s on the host: %w", path, err)
	}
	var seen unix.Stat_t
	if err := unix.Stat(path, &seen); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if (seen.Dev == host.Dev && seen.Ino == host.Ino) || seen.Dev == parentDev {
		if err := unix.Mount("tmpfs", path, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, viewTmpfs); err != nil {
			return fmt.Errorf("mounting the view of %s: %w", path, err)
		}
		d.v.logf("view: %s is the view's", path)
	} else {
		d.v.logf("view: taking over the view of %s", path)
	}
	rw, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.O_CLOEXEC)
	if err != nil {
		return fmt.Errorf("a handle on the view of %s: %w", path, err)
	}
	d.rw = rw
	if err := unix.MountSetattr(rw, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY}); err != nil {
		return fmt.Errorf("a writable handle on the view of %s: %w", path, err)
	}
	// Read-only for the programs: the tmpfs belongs to the user, who could
	// otherwise write into what stands for the host's directory.
	if err := unix.MountSetattr(unix.AT_FDCWD, path, 0, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
		return fmt.Errorf("making the view of %s read-only: %w", path, err)
	}
	if err := unix.Stat(path, &seen); err != nil {
		return err
	}
	d.dev = seen.Dev
	return d.watch()
}

// watch (re)starts the inotify watch on the host directory: after setUp,
// and when the host replaced the directory of a nested view.
func (d *dirView) watch() error {
	wd, err := d.v.host.watch(d.v.inotify, d.spec.path, dirEvents)
	if err != nil {
		return fmt.Errorf("watching %s on the host: %w", d.spec.path, err)
	}
	d.wd = wd
	d.v.watches[wd] = d
	return nil
}

// syncAll brings every entry in line with the host: those the host has and
// those the view has.
func (d *dirView) syncAll() error {
	names := map[string]bool{}
	var hostNames []string
	d.v.host.do(func() { hostNames, _ = readNames(d.spec.path) })
	for _, n := range hostNames {
		names[n] = true
	}
	shown, err := readNamesFd(d.rw)
	if err != nil {
		return fmt.Errorf("listing the view of %s: %w", d.spec.path, err)
	}
	for _, n := range shown {
		names[n] = true
	}
	for _, r := range []string{resolvConf, nsswitchConf} {
		if d.spec.rule(r) == generate {
			names[r] = true
		}
	}
	var errs []error
	for n := range names {
		if _, err := d.sync(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// syncTries bounds how often sync looks again at a host entry that went
// while it was being shown (a file written beside and renamed over another,
// as tools do: it lives for microseconds).
const syncTries = 3

// sync brings one entry of the view in line with the host and the rules;
// changed says whether the view had to change. An entry the host removes
// half-way is looked at again; one that keeps going as it is looked at
// (made and renamed away, over and over) is not shown: whatever the host
// does with that name next comes as an event of its own.
func (d *dirView) sync(name string) (changed bool, err error) {
	for try := 1; ; try++ {
		changed, err = d.syncOnce(name)
		if err == nil || !errors.Is(err, unix.ENOENT) {
			return changed, err
		}
		if try == syncTries {
			return d.remove(name)
		}
	}
}

func (d *dirView) syncOnce(name string) (changed bool, err error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return false, nil
	}
	path := filepath.Join(d.spec.path, name)
	switch d.spec.rule(name) {
	case deny:
		return d.remove(name)
	case generate:
		content, ok, err := d.v.generated(d.spec.path, name)
		if err != nil {
			return false, fmt.Errorf("%s: %w", path, err)
		}
		if !ok {
			return d.remove(name)
		}
		return d.writeFile(name, content)
	case nested:
		return d.syncNested(name)
	}
	host, err := d.v.host.lstat(path)
	if errors.Is(err, unix.ENOENT) {
		return d.remove(name)
	}
	if err != nil {
		return false, fmt.Errorf("%s on the host: %w", path, err)
	}
	if host.Mode&unix.S_IFMT == unix.S_IFLNK {
		target, err := d.v.host.readlink(path)
		if err != nil {
			return false, fmt.Errorf("%s on the host: %w", path, err)
		}
		return d.writeSymlink(name, target)
	}
	return d.bind(name, host)
}

// current is what the view shows at name: its lstat, and whether that is
// something mounted on a placeholder (else a file of the view's own, or
// nothing: ok false).
func (d *dirView) current(name string) (st unix.Stat_t, mounted, ok bool) {
	if err := unix.Lstat(filepath.Join(d.spec.path, name), &st); err != nil {
		return st, false, false
	}
	return st, st.Dev != d.dev, true
}

// bind shows the host's entry at name: a clone of the host's mount tree
// there, attached on a placeholder of the same kind. A bind already there
// of another inode (the host replaced the entry) is swapped for the new one
// in one step where the kernel can (MOVE_MOUNT_BENEATH), else taken off and
// replaced.
func (d *dirView) bind(name string, host unix.Stat_t) (bool, error) {
	path := filepath.Join(d.spec.path, name)
	cur, mounted, ok := d.current(name)
	if ok && mounted && cur.Dev == host.Dev && cur.Ino == host.Ino {
		return false, nil
	}
	clone, err := d.v.host.clone(path)
	if errors.Is(err, unix.ENOENT) {
		return d.remove(name) // gone meanwhile: its event follows
	}
	if err != nil {
		return false, fmt.Errorf("cloning %s: %w", path, err)
	}
	defer unix.Close(clone)
	isDir := host.Mode&unix.S_IFMT == unix.S_IFDIR
	if ok && mounted && (cur.Mode&unix.S_IFMT == unix.S_IFDIR) == isDir {
		err := unix.MoveMount(clone, "", unix.AT_FDCWD, path, unix.MOVE_MOUNT_F_EMPTY_PATH|moveMountBeneath)
		if err == nil {
			if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
				// Under a quick run of replacements the old one is
				// sometimes gone already (EINVAL: nothing over the new
				// one): what counts is that the new one shows.
				var now unix.Stat_t
				if !errors.Is(err, unix.EINVAL) || unix.Lstat(path, &now) != nil ||
					now.Dev != host.Dev || now.Ino != host.Ino {
					return true, fmt.Errorf("taking the old %s off: %w", path, err)
				}
			}
			return true, nil
		}
		if errors.Is(err, unix.ENOENT) {
			return false, nil // gone meanwhile: its event follows
		}
		if !errors.Is(err, unix.EINVAL) {
			return false, fmt.Errorf("replacing %s: %w", path, err)
		}
		// No MOVE_MOUNT_BENEATH (Linux < 6.5): off, then on.
	}
	if ok {
		if _, err := d.remove(name); err != nil {
			return false, err
		}
	}
	if err := d.placeholder(name, isDir); err != nil {
		return false, err
	}
	if err := unix.MoveMount(clone, "", unix.AT_FDCWD, path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		unix.Unlinkat(d.rw, name, removeFlag(isDir))
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("showing %s: %w", path, err)
	}
	return true, nil
}

func (d *dirView) placeholder(name string, isDir bool) error {
	if isDir {
		if err := unix.Mkdirat(d.rw, name, 0o755); err != nil {
			return fmt.Errorf("a placeholder for %s: %w", filepath.Join(d.spec.path, name), err)
		}
		return nil
	}
	fd, err := unix.Openat(d.rw, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("a placeholder for %s: %w", filepath.Join(d.spec.path, name), err)
	}
	return unix.Close(fd)
}

// remove takes name out of the view: what is mounted on it, then the
// placeholder or the view's own file.
func (d *dirView) remove(name string) (bool, error) {
	path := filepath.Join(d.spec.path, name)
	cur, mounted, ok := d.current(name)
	if !ok {
		return false, nil
	}
	for i := 0; mounted && i < maxStack; i++ {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			return false, fmt.Errorf("taking %s off: %w", path, err)
		}
		cur, mounted, ok = d.current(name)
		if !ok {
			return true, nil
		}
	}
	if mounted {
		return false, fmt.Errorf("taking %s off: more than %d mounts on it", path, maxStack)
	}
	if n, ok := d.nested[name]; ok {
		n.close()
		delete(d.nested, name)
	}
	if err := unix.Unlinkat(d.rw, name, removeFlag(cur.Mode&unix.S_IFMT == unix.S_IFDIR)); err != nil &&
		!errors.Is(err, unix.ENOENT) {
		return false, fmt.Errorf("removing %s: %w", path, err)
	}
	return true, nil
}

func removeFlag(isDir bool) int {
	if isDir {
		return unix.AT_REMOVEDIR
	}
	return 0
}

// writeFile makes name a file of the view's own with this content (replaced
// in one rename, so a reader sees the old or the new, never half).
func (d *dirView) writeFile(name string, content []byte) (bool, error) {
	path := filepath.Join(d.spec.path, name)
	cur, mounted, ok := d.current(name)
	if ok && !mounted && cur.Mode&unix.S_IFMT == unix.S_IFREG && cur.Size == int64(len(content)) {
		if old, err := readFileAt(d.rw, name, len(content)+1); err == nil && string(old) == string(content) {
			return false, nil
		}
	}
	if ok && (mounted || cur.Mode&unix.S_IFMT != unix.S_IFREG) {
		if _, err := d.remove(name); err != nil {
			return false, err
		}
	}
	tmp := "." + name + ".wg-wrap"
	unix.Unlinkat(d.rw, tmp, 0)
	fd, err := unix.Openat(d.rw, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	_, werr := unix.Write(fd, content)
	unix.Close(fd)
	if werr == nil {
		werr = unix.Renameat(d.rw, tmp, d.rw, name)
	}
	if werr != nil {
		unix.Unlinkat(d.rw, tmp, 0)
		return false, fmt.Errorf("writing %s: %w", path, werr)
	}
	return true, nil
}

// writeSymlink makes name a symlink to target, as the host has it.
func (d *dirView) writeSymlink(name, target string) (bool, error) {
	path := filepath.Join(d.spec.path, name)
	cur, mounted, ok := d.current(name)
	if ok && !mounted && cur.Mode&unix.S_IFMT == unix.S_IFLNK {
		buf := make([]byte, unix.PathMax)
		if n, err := unix.Readlinkat(d.rw, name, buf); err == nil && string(buf[:n]) == target {
			return false, nil
		}
	}
	if ok && (mounted || cur.Mode&unix.S_IFMT != unix.S_IFLNK) {
		if _, err := d.remove(name); err != nil {
			return false, err
		}
	}
	tmp := "." + name + ".wg-wrap"
	unix.Unlinkat(d.rw, tmp, 0)
	if err := unix.Symlinkat(target, d.rw, tmp); err != nil {
		return false, fmt.Errorf("copying the symlink %s: %w", path, err)
	}
	if err := unix.Renameat(d.rw, tmp, d.rw, name); err != nil {
		unix.Unlinkat(d.rw, tmp, 0)
		return false, fmt.Errorf("copying the symlink %s: %w", path, err)
	}
	return true, nil
}

// syncNested keeps the nested view at name: a directory of its own (a
// tmpfs on a placeholder) when the host has one there, nothing otherwise.
func (d *dirView) syncNested(name string) (bool, error) {
	spec := d.spec.nested[name]
	host, err := d.v.host.lstat(spec.path)
	if err != nil || host.Mode&unix.S_IFMT != unix.S_IFDIR {
		if errors.Is(err, unix.ENOENT) || err == nil {
			return d.remove(name)
		}
		return false, fmt.Errorf("%s on the host: %w", spec.path, err)
	}
	changed := false
	n, ok := d.nested[name]
	if !ok {
		cur, _, exists := d.current(name)
		if exists && cur.Dev == host.Dev && cur.Ino == host.Ino {
			// The host's directory itself is bound there: not a view.
			if _, err := d.remove(name); err != nil {
				return false, err
			}
			exists = false
		}
		if !exists {
			if err := d.placeholder(name, true); err != nil {
				return false, err
			}
			changed = true
		}
		n = &dirView{v: d.v, spec: spec, rw: -1, wd: -1, nested: map[string]*dirView{}}
		if err := n.setUp(d.dev); err != nil {
			n.close()
			return changed, err
		}
		d.nested[name] = n
	} else if err := n.watch(); err != nil { // the host may have made a new directory
		return changed, err
	}
	return changed, n.syncAll()
}

// close lets go of the view's handles (its mounts stay).
func (d *dirView) close() {
	for _, n := range d.nested {
		n.close()
	}
	if d.rw >= 0 {
		unix.Close(d.rw)
		d.rw = -1
	}
	if d.wd >= 0 {
		delete(d.v.watches, d.wd)
		unix.InotifyRmWatch(d.v.inotify, uint32(d.wd))
		d.wd = -1
	}
}

// readNames lists a directory by path (on the host side).
func readNames(path string) ([]string, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return readDirFd(fd)
}

// readNamesFd lists the directory a handle is on, without moving the handle.
func readNamesFd(dirfd int) ([]string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return readDirFd(fd)
}

func readDirFd(fd int) ([]string, error) {
	var names []string
	buf := make([]byte, 4096)
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err != nil {
			return names, err
		}
		if n == 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// readFileAt reads at most limit bytes of dirfd/name.
func readFileAt(dirfd int, name string, limit int) ([]byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	buf := make([]byte, limit)
	total := 0
	for total < limit {
		n, err := unix.Read(fd, buf[total:])
		if err != nil {
			return nil, err
		}
		if n == 0 {
			break
		}
		total += n
	}
	return buf[:total], nil
}
