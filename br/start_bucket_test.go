package br

import (
	"context"
	"strings"
	"testing"
	"time"

	"logbackup/tests/azuretest"
	"logbackup/tests/s3test"
)

// TestStartMissingBucketHint: `start` on a bucket or container nobody has
// created says so and how to create it, instead of asking whether the
// path is a log backup's. The servers answer as S3 (NoSuchBucket) and
// Azure (ContainerNotFound) do; tests/realstorage proves MinIO, Azurite
// and fake-gcs-server answer so too.
func TestStartMissingBucketHint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := newOwnerCluster(t, ctx)
	s3 := s3test.Start(t)
	az := azuretest.Start(t)
	for _, c := range []struct {
		url, secret string
		want        []string
	}{
		{s3.URL("nobucket", "log"), s3test.SecretKey, []string{`bucket "nobucket" does not exist`, "mc mb", "aws s3 mb s3://nobucket"}},
		{az.URL("nocontainer", "log"), azuretest.AccountKey, []string{`container "nocontainer" does not exist`, "az storage container create --name nocontainer"}},
	} {
		_, err := o.start(ctx, "pitr", c.url, false)
		hint := HintOf(err)
		for _, w := range c.want {
			if !strings.Contains(hint, w) {
				t.Errorf("start on %s: hint %q lacks %q (error: %v)", c.url[:5], hint, w, err)
			}
		}
		if strings.Contains(err.Error()+hint, c.secret) {
			t.Errorf("the secret is in the error or hint")
		}
	}
}
