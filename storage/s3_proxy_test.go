package storage

import (
	"net/http"
	"net/url"
	"testing"
)

// TestMetadataBypassesProxy: with a proxy in the environment, requests to
// the instance-metadata and container-credentials endpoints go direct
// (a proxy would answer with its own machine's role, or nothing), and
// S3's and STS's go through the proxy.
func TestMetadataBypassesProxy(t *testing.T) {
	proxy, _ := url.Parse("http://proxy.example:3128")
	p := bypassForMetadata(func(*http.Request) (*url.URL, error) { return proxy, nil })
	for u, direct := range map[string]bool{
		"http://169.254.169.254/latest/api/token": true,
		"http://169.254.170.2/v2/credentials/x":   true,
		"http://[fd00:ec2::254]/latest/api/token": true,
		"http://127.0.0.1:9000/bk":                true,
		"https://s3.us-east-1.amazonaws.com/bk":   false,
		"https://sts.us-east-1.amazonaws.com/":    false,
		"http://10.0.0.5:9000/bk":                 false,
	} {
		req, _ := http.NewRequest("GET", u, nil)
		got, err := p(req)
		if err != nil || (got == nil) != direct {
			t.Errorf("%s: proxy %v, %v; want direct=%v", u, got, err, direct)
		}
	}
}
