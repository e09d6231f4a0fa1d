package task

import (
	"testing"

	"github.com/pingcap/kvproto/pkg/metapb"

	"logbackup/streamagent/matcher"
)

// BenchmarkPublishStats: what the loop's 50 ms stats refresh costs with
// 100,000 regions observed (it walked every matcher once: a fifth of the
// process's CPU in BenchmarkManyRegions at 100,000 regions).
//
//	go test -run '^$' -bench PublishStats ./streamagent/task/
func BenchmarkPublishStats(b *testing.B) {
	h := newHarness(b, nil)
	for i := uint64(2); i <= 100_000; i++ {
		sub := &subscription{reqID: i, region: &metapb.Region{Id: 10 + i}, m: matcher.New(h.startTS)}
		h.r.regions.subs[i], h.r.regions.byRegion[10+i] = sub, sub
	}
	b.ResetTimer()
	for b.Loop() {
		h.r.publishStats()
	}
}
