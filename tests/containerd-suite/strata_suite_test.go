// Runs containerd's own snapshotter test suite against `strata serve`
// through containerd's proxy client. Each case gets a fresh strata process
// on a fresh root. STRATA_BIN names the strata binary; STRATA_SUITE_CONFIG
// a config file for it, and STRATA_SUITE_LADDER the kernel rungs serve must
// then say it uses (e.g. "erofs=loop").
package stratasuite

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/pkg/testutil"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func TestStrata(t *testing.T) {
	testutil.RequiresRoot(t)
	bin := os.Getenv("STRATA_BIN")
	if bin == "" {
		t.Fatal("STRATA_BIN is not set")
	}
	testsuite.SnapshotterSuite(t, "strata", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return start(bin, root)
	})
}

func start(bin, root string) (snapshots.Snapshotter, func() error, error) {
	socket := filepath.Join(root, "s.sock")
	logFile, err := os.Create(filepath.Join(root, "..", "strata.log"))
	if err != nil {
		return nil, nil, err
	}
	config := os.Getenv("STRATA_SUITE_CONFIG")
	if config == "" {
		config = "/dev/null"
	}
	cmd := exec.Command(bin, "--root", filepath.Join(root, "strata"), "--config", config, "--log-level", "info", "serve", "--address", socket)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return nil, nil, fmt.Errorf("strata serve did not listen on %s", socket)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A forced kernel rung must be the one serve says it uses.
	if want := os.Getenv("STRATA_SUITE_LADDER"); want != "" {
		logText, _ := os.ReadFile(logFile.Name())
		if !strings.Contains(string(logText), "ladder="+want) {
			cmd.Process.Kill()
			return nil, nil, fmt.Errorf("strata serve does not use ladder %q: %s", want, logText)
		}
	}
	conn, err := grpc.Dial("unix://"+socket, grpc.WithInsecure())
	if err != nil {
		cmd.Process.Kill()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "strata")
	cleanup := func() error {
		conn.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			err = fmt.Errorf("strata serve did not stop on SIGTERM")
		}
		unmountUnder(root)
		logFile.Close()
		return err
	}
	return sn, cleanup, nil
}

// unmountUnder lazily unmounts what is left mounted under dir, deepest first.
func unmountUnder(dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			points = append(points, fields[4])
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, p := range points {
		syscall.Unmount(p, syscall.MNT_DETACH)
	}
}
