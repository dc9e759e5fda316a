package fdbind

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// Bind-level throughput of FDBind against wireguard-go's own StdNetBind, in
// the same shape for both: a sender Bind sends full batches (BatchSize
// packets of one size) to a receiver Bind on loopback, whose ReceiveFuncs are
// drained by one goroutine each. UDP drops what the receiver cannot keep up
// with, so the benchmark counts what arrives, not what was sent:
//
//	MB/s      delivered payload per second (overrides the offered rate that
//	          SetBytes alone would print), up to the last arrival
//	pkts/s    delivered packets per second
//	loss%     packets sent but never received
//	gso, gro  1 if the sender used UDP_SEGMENT / the receiver UDP_GRO at the end
//	rcvbuf-MiB the receiving socket's SO_RCVBUF as the kernel reports it
//	allocs/op allocations per batch, sender and receivers together
//
// The machine is noisy: compare the two only within one invocation, with
// rounds alternating, as scripts/bench_bind.sh does. Setting
// FDBIND_BENCH_FD_FIRST=1 runs FDBind before StdNetBind in each variant, so
// the script can alternate the order too.

const (
	// wireguard-go's data packet at MTU 1420: 1420 bytes of encrypted
	// content plus 32 bytes of header and tag.
	fullPacket  = 1420 + 32
	smallPacket = 100

	// benchTailIdle ends the wait for packets still in flight after the
	// last Send: on loopback they are already queued on the receiving
	// socket, so a pause this long means the rest was dropped.
	benchTailIdle = 20 * time.Millisecond
	benchTailMax  = 2 * time.Second
	// benchWatchdog closes both Binds, failing the run, if one b.N run
	// takes this long (a Send or a receiver stuck for good).
	benchWatchdog = 60 * time.Second
	// hostSocketBuffer is what wg-wrap's Python side asks for (like
	// StdNetBind), capped by net.core.{r,w}mem_max: it does not force.
	hostSocketBuffer = 7 << 20
)

// benchPair is a sender and a receiver Bind, open, on loopback.
type benchPair struct {
	tx, rx   conn.Bind
	recvFns  []conn.ReceiveFunc
	dst      conn.Endpoint
	rcvbuf   int // SO_RCVBUF of the socket dst reaches
	offloads func() (gso, gro bool)
	close    func()
}

type openPair func(b *testing.B, lo netip.Addr) *benchPair

func BenchmarkBind(b *testing.B) {
	variants := []struct {
		name string
		lo   netip.Addr
		size int
	}{
		{"v4-1452B", lo4, fullPacket},
		{"v6-1452B", lo6, fullPacket},
		{"v4-100B", lo4, smallPacket},
		{"v6-100B", lo6, smallPacket},
	}
	binds := []struct {
		name string
		open openPair
	}{
		{"StdNetBind", openStdPair},
		{"FDBind", openFDPair},
	}
	if os.Getenv("FDBIND_BENCH_FD_FIRST") == "1" {
		binds[0], binds[1] = binds[1], binds[0]
	}
	for _, v := range variants {
		for _, k := range binds {
			b.Run(v.name+"/"+k.name, func(b *testing.B) {
				benchThroughput(b, k.open(b, v.lo), v.size)
			})
		}
	}
}

func benchThroughput(b *testing.B, p *benchPair, size int) {
	batch := p.tx.BatchSize()
	// Capacity like wireguard-go's own buffers: GSO coalesces a batch
	// into the first buffer's spare room.
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, size, device.MaxMessageSize)
		for j := range bufs[i] {
			bufs[i][j] = byte(i + j)
		}
	}

	origin := time.Now()
	var rxPackets, rxBytes, lastArrival atomic.Int64
	var rxErr atomic.Value
	var wg sync.WaitGroup
	for _, fn := range p.recvFns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := drain(fn, batch, &rxPackets, &rxBytes, &lastArrival, origin)
			if !errors.Is(err, net.ErrClosed) {
				rxErr.Store(fmt.Errorf("receive after %d packets: %w", n, err))
			}
		}()
	}
	var timedOut atomic.Bool
	watchdog := time.AfterFunc(benchWatchdog, func() {
		timedOut.Store(true)
		p.close()
	})
	stop := func() {
		watchdog.Stop()
		p.close()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			b.Error("receivers did not return within 5 s of Close")
		}
	}
	defer stop()

	b.SetBytes(int64(batch * size))
	b.ReportAllocs() // the whole process: sender and receivers
	b.ResetTimer()
	start := time.Since(origin)
	gsoDisabled := 0
	for range b.N {
		err := p.tx.Send(bufs, p.dst)
		var off conn.ErrUDPGSODisabled
		if errors.As(err, &off) {
			// wireguard-go logs this and carries on, and so do we.
			gsoDisabled++
			err = off.RetryErr
		}
		if err != nil {
			if timedOut.Load() {
				b.Fatalf("Send: still running after %v", benchWatchdog)
			}
			b.Fatalf("Send: %v", err)
		}
	}
	sent := int64(b.N * batch)
	waitTail(&rxPackets, sent)
	b.StopTimer()

	if err, _ := rxErr.Load().(error); err != nil {
		b.Fatal(err)
	}
	if gsoDisabled > 0 {
		b.Logf("UDP GSO disabled by %d Send errors", gsoDisabled)
	}
	got := rxPackets.Load()
	elapsed := time.Duration(lastArrival.Load()) - start
	if got == 0 || elapsed <= 0 {
		b.Fatalf("nothing arrived of %d packets", sent)
	}
	gso, gro := p.offloads()
	b.ReportMetric(float64(rxBytes.Load())/1e6/elapsed.Seconds(), "MB/s")
	b.ReportMetric(float64(got)/elapsed.Seconds(), "pkts/s")
	b.ReportMetric(100*float64(sent-got)/float64(sent), "loss%")
	b.ReportMetric(boolMetric(gso), "gso")
	b.ReportMetric(boolMetric(gro), "gro")
	b.ReportMetric(float64(p.rcvbuf)/(1<<20), "rcvbuf-MiB")
}

// drain reads from fn until it fails (Close), counting packets and bytes, and
// returns the number of packets it counted with the error.
func drain(fn conn.ReceiveFunc, batch int, packets, nbytes, lastArrival *atomic.Int64, origin time.Time) (int64, error) {
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, device.MaxMessageSize)
	}
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	var total int64
	for {
		n, err := fn(bufs, sizes, eps)
		if err != nil {
			return total, err
		}
		var count, sum int64
		for _, size := range sizes[:n] {
			if size > 0 {
				count++
				sum += int64(size)
			}
		}
		total += count
		packets.Add(count)
		nbytes.Add(sum)
		lastArrival.Store(int64(time.Since(origin)))
	}
}

// waitTail waits until sent packets have arrived, or none has for
// benchTailIdle, or benchTailMax has passed.
func waitTail(received *atomic.Int64, sent int64) {
	const tick = time.Millisecond
	deadline := time.Now().Add(benchTailMax)
	last, idleSince := received.Load(), time.Now()
	for i := 0; i < int(benchTailMax/tick); i++ {
		got := received.Load()
		now := time.Now()
		if got >= sent || now.After(deadline) {
			return
		}
		if got != last {
			last, idleSince = got, now
		} else if now.Sub(idleSince) >= benchTailIdle {
			return
		}
		time.Sleep(tick)
	}
}

func boolMetric(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

// openFDPair makes two host sockets the way wg-wrap's Python side does
// (AF_INET6 dual-stack on [::]:0, 7 MiB buffers requested) and wraps each
// in an FDBind.
func openFDPair(b *testing.B, lo netip.Addr) *benchPair {
	tx := openFDBind(b)
	rx := openFDBind(b)
	fns, port, err := rx.Open(0)
	if err != nil {
		b.Fatalf("FDBind.Open: %v", err)
	}
	if _, _, err := tx.Open(0); err != nil {
		b.Fatalf("FDBind.Open: %v", err)
	}
	dst, err := tx.ParseEndpoint(netip.AddrPortFrom(lo, port).String())
	if err != nil {
		b.Fatal(err)
	}
	rcvbuf, err := unix.GetsockoptInt(rx.fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		b.Fatalf("SO_RCVBUF: %v", err)
	}
	var once sync.Once
	return &benchPair{
		tx: tx, rx: rx, recvFns: fns, dst: dst, rcvbuf: rcvbuf,
		offloads: func() (bool, bool) {
			tx.mu.Lock()
			defer tx.mu.Unlock()
			return tx.txOffload, rx.rxOffload
		},
		close: func() {
			once.Do(func() {
				tx.Release()
				rx.Release()
			})
		},
	}
}

func openFDBind(b *testing.B) *Bind {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		b.Fatalf("socket: %v", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		unix.Close(fd)
		b.Fatalf("IPV6_V6ONLY: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{}); err != nil {
		unix.Close(fd)
		b.Fatalf("bind [::]:0: %v", err)
	}
	for _, opt := range []int{unix.SO_SNDBUF, unix.SO_RCVBUF} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, hostSocketBuffer); err != nil {
			unix.Close(fd)
			b.Fatalf("setting socket buffer: %v", err)
		}
	}
	bind, err := New(fd)
	if err != nil {
		unix.Close(fd)
		b.Fatal(err)
	}
	return bind
}

// openStdPair opens two of wireguard-go's StdNetBinds on random ports; each
// sets its own socket buffers (forced to 7 MiB when it may).
func openStdPair(b *testing.B, lo netip.Addr) *benchPair {
	tx, rx := conn.NewStdNetBind(), conn.NewStdNetBind()
	fns, port, err := rx.Open(0)
	if err != nil {
		b.Fatalf("StdNetBind.Open: %v", err)
	}
	if _, _, err := tx.Open(0); err != nil {
		rx.Close()
		b.Fatalf("StdNetBind.Open: %v", err)
	}
	dst, err := tx.ParseEndpoint(netip.AddrPortFrom(lo, port).String())
	if err != nil {
		b.Fatal(err)
	}
	// StdNetBind keeps its sockets and offload flags to itself; the
	// numbers are only read for the report.
	family := "ipv4"
	if lo.Is6() {
		family = "ipv6"
	}
	var once sync.Once
	return &benchPair{
		tx: tx, rx: rx, recvFns: fns, dst: dst,
		rcvbuf: socketRcvbuf(b, lo.Is6(), port),
		offloads: func() (bool, bool) {
			return unexportedBool(tx, family+"TxOffload"), unexportedBool(rx, family+"RxOffload")
		},
		close: func() {
			once.Do(func() {
				tx.Close()
				rx.Close()
			})
		},
	}
}

// unexportedBool reads a bool field of *conn.StdNetBind (reflect may read
// unexported fields, not write them).
func unexportedBool(bind conn.Bind, field string) bool {
	f := reflect.ValueOf(bind).Elem().FieldByName(field)
	return f.IsValid() && f.Kind() == reflect.Bool && f.Bool()
}

// socketRcvbuf finds this process's UDP socket bound to port in the given
// family and returns its SO_RCVBUF, or 0 if there is none.
func socketRcvbuf(b *testing.B, v6 bool, port uint16) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		b.Logf("cannot list fds: %v", err)
		return 0
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if sotype, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || sotype != unix.SOCK_DGRAM {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			continue
		}
		match := false
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			match = !v6 && sa.Port == int(port)
		case *unix.SockaddrInet6:
			match = v6 && sa.Port == int(port)
		}
		if match {
			if size, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF); err == nil {
				return size
			}
		}
	}
	return 0
}
