// Package automaxprocs is a stand-in for go.uber.org/automaxprocs v1.6.0,
// which cannot be downloaded on the test machine (no module proxy). It keeps
// the real module path, so a binary that imports it carries
// "dep go.uber.org/automaxprocs" in its build info, and it applies the real
// package's documented rule at init:
//
//   - GOMAXPROCS present in the environment (any value, even empty or
//     invalid): do nothing (maxprocs.Set "honors" it);
//   - otherwise read the CPU quota of the process's OWN cgroup only (no
//     ancestors), like internal/cgroups: cgroup v2 cpu.max when cgroup2 is
//     mounted at /sys/fs/cgroup, else v1 cpu.cfs_quota_us / cpu.cfs_period_us
//     of the v1 "cpu" hierarchy found through /proc/self/mountinfo;
//   - no quota (v1 quota <= 0, v2 "max", no cpu cgroup): do nothing;
//   - else runtime.GOMAXPROCS(max(1, floor(quota))) (DefaultRoundFunc, and
//     minGOMAXPROCS 1).
package automaxprocs

import (
	"bufio"
	"log"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

const v2MountPoint = "/sys/fs/cgroup"

func init() {
	if v, exists := os.LookupEnv("GOMAXPROCS"); exists {
		log.Printf("maxprocs: Honoring GOMAXPROCS=%q as set in environment", v)
		return
	}
	quota, ok := cpuQuota()
	if !ok {
		log.Printf("maxprocs: Leaving GOMAXPROCS=%v: CPU quota undefined", runtime.GOMAXPROCS(0))
		return
	}
	n := int(math.Floor(quota))
	if n < 1 {
		n = 1
	}
	log.Printf("maxprocs: Updating GOMAXPROCS=%v: determined from CPU quota", n)
	runtime.GOMAXPROCS(n)
}

type mount struct {
	root, point, fstype string
	superOptions        []string
}

func mounts() []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, field := range fields {
			if field == "-" {
				sep = i
				break
			}
		}
		if sep < 6 || len(fields) < sep+4 {
			continue
		}
		out = append(out, mount{
			root:         unescape(fields[3]),
			point:        unescape(fields[4]),
			fstype:       fields[sep+1],
			superOptions: strings.Split(fields[sep+3], ","),
		})
	}
	return out
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupPaths maps each v1 controller (and "" for v2, hierarchy 0) to its path.
func cgroupPaths() map[string]string {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" {
			out[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out
}

func readInt(path string) (int64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return n, err == nil
}

func cpuQuota() (float64, bool) {
	ms := mounts()
	paths := cgroupPaths()
	for _, m := range ms {
		if m.fstype == "cgroup2" && m.point == v2MountPoint {
			p, ok := paths[""]
			if !ok {
				break
			}
			return v2Quota(filepath.Join(v2MountPoint, p, "cpu.max"))
		}
	}
	p, ok := paths["cpu"]
	if !ok {
		return 0, false
	}
	for _, m := range ms {
		if m.fstype != "cgroup" || !contains(m.superOptions, "cpu") {
			continue
		}
		rel, err := filepath.Rel(m.root, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			return 0, false
		}
		dir := filepath.Join(m.point, rel)
		quota, ok := readInt(filepath.Join(dir, "cpu.cfs_quota_us"))
		if !ok || quota <= 0 {
			return 0, false
		}
		period, ok := readInt(filepath.Join(dir, "cpu.cfs_period_us"))
		if !ok || period <= 0 {
			return 0, false
		}
		return float64(quota) / float64(period), true
	}
	return 0, false
}

func v2Quota(path string) (float64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 || fields[0] == "max" {
		return 0, false
	}
	quota, err := strconv.Atoi(fields[0])
	if err != nil {
		return 0, false
	}
	period := 100000
	if len(fields) > 1 {
		if period, err = strconv.Atoi(fields[1]); err != nil || period <= 0 {
			return 0, false
		}
	}
	return float64(quota) / float64(period), true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
