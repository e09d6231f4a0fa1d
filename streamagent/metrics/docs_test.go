package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricDocs keeps docs/METRICS.md, docs/alerts.yml and the Grafana
// dashboard in step with the metrics the agent registers: every metric is
// documented, and every name the alerts and the dashboard use exists.
func TestMetricDocs(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	// Vectors only show up once a child exists.
	m.RegionErrors.WithLabelValues("x")
	m.InitialScans.WithLabelValues("x")
	m.FlushDuration.WithLabelValues("x")
	m.ObservedRegions.WithLabelValues("x")
	m.BufferedBytes.WithLabelValues("x")
	m.Checkpoints.SetStore("x", 1)
	m.Checkpoints.ReplaceGlobal(map[string]uint64{"x": 1})
	m.Checkpoints.SetGCSafePoint(1)
	m.AdvancerOwner.WithLabelValues("x")
	m.ForeignWriters.WithLabelValues("x")
	m.TiKV.TaskStatus.WithLabelValues("x")
	m.TiKV.Errors.WithLabelValues("x")
	m.TiKV.FatalErrors.WithLabelValues("x")
	m.TiKV.FlushDuration.WithLabelValues("x")
	m.TiKV.UploadFileSize.WithLabelValues("x")
	m.TiKV.InitialScanReason.WithLabelValues("x")
	m.TiKV.PendingScans.WithLabelValues("x")
	m.Errors.WithLabelValues("x")
	m.FatalErrors.WithLabelValues("x")
	m.TaskStatus.WithLabelValues("x")
	m.Retries.WithLabelValues("x")
	m.AutoResumes.WithLabelValues("x")
	m.RecoveryProbes.WithLabelValues("x", "y")
	m.StorageRetries.WithLabelValues("x")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{"up": true}
	doc, err := os.ReadFile("../../docs/METRICS.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		registered[mf.GetName()] = true
		if !strings.Contains(string(doc), "`"+mf.GetName()+"`") {
			t.Errorf("docs/METRICS.md does not document %s", mf.GetName())
		}
	}
	names := regexp.MustCompile(`\b(logbackup_[a-z_]+|tikv_log_backup_[a-z_]+|tidb_log_backup_[a-z_]+|tikv_gcworker_[a-z_]+|up)\b`)
	check := func(file, text string) {
		for _, n := range names.FindAllString(text, -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
			if !registered[base] {
				t.Errorf("%s uses %s, which the agent does not export", file, n)
			}
		}
	}
	alerts, err := os.ReadFile("../../docs/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	check("docs/alerts.yml", string(alerts))
	raw, err := os.ReadFile("../../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct{ Expr string } `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	if len(dash.Panels) == 0 {
		t.Fatal("dashboard has no panels")
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			check("docs/grafana-dashboard.json", tg.Expr)
		}
	}
}
